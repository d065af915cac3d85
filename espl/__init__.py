"""espl-bench: Evolutionary System Prompt Learning (E-SPL) and its baselines on text environments.

The installed package is one import root; its subpackages, lowest layer first (an import-linter
contract in ``pyproject.toml`` checks that no module imports a layer above its own):

* ``errors``, ``records``, ``stats``: leaves (error types, the typed run-folder records, statistics);
* ``adapters``: third-party internals, one module per library (TRL, torch, litellm, textarena);
* ``envs``: the tasks (Gymnasium text environments, splits, registry);
* ``agents``: what acts in them (samplers, the rollout engine, litellm calls, reflectors);
* ``config``, ``methods``: the run's typed configuration and the method table;
* ``scoring``: the evaluation protocol, the weights x prompt breakdown, metrics;
* ``method``: E-SPL itself (programs, edits, selection, rating, advantage, reflection, the loop);
* ``training``, ``baselines``, ``leaderboards``: TRL learning and the policy; GEPA; boards;
* ``running``: the command line, building and committing runs, re-scoring run folders.

Importing ``espl_bench`` imports nothing else.
"""
