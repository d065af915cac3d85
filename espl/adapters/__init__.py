"""Third-party internals, one module per library: the only code that touches a private name.

A library's underscore attributes, undocumented instance attributes and process-wide state are
not its API: a release may move them without notice. Each module here wraps every such touch of
one library in small named functions the rest of the package calls instead, states the versions
it was checked against (``CHECKED``) and lists what it relies on (``missing()`` names each part
the installed release no longer has). ``tests/test_private_access.py`` checks both: no other
module names a private attribute, and every adapter's ``missing()`` is empty.

* :mod:`.trl`: GRPOTrainer's vLLM weight-sync bookkeeping and its optimizer's learning rate;
* :mod:`.torch`: the CPU's native-bfloat16 probes;
* :mod:`.litellm`: a response's computed cost and the process-wide custom provider list;
* :mod:`.textarena`: a puzzle's share completed at the turn limit.

transformers needs none: the package uses only its public API. Each module imports its library
only inside its functions (and ``missing()``), so importing an adapter costs nothing.
"""
