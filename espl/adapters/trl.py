"""TRL's ``GRPOTrainer`` internals the TRL learner relies on (:mod:`espl_bench.training.trl_learner`).

Checked against trl 1.16.0, the floor of ``trl>=1.16,<2`` (``pyproject.toml``) and the version
installed here and by the floors CI step (``tests/floors.txt`` runs the check there too). What it touches:

* ``trainer._last_loaded_step`` (private): the step whose weights TRL last pushed into its vLLM
  engine; TRL pushes before a step's generation only when it differs from ``state.global_step``;
* ``trainer.use_vllm`` and ``trainer.vllm_generation`` (undocumented instance attributes): set by
  ``__init__`` from ``GRPOConfig.use_vllm``; the sampler-logprob correction needs them set
  without TRL's own engine (:func:`use_external_vllm`);
* ``trainer.optimizer.param_groups[*]["lr"]``: set to 0 for one step; the scheduler writes each
  group's rate again at its next step.

``missing()`` reads GRPOTrainer's source (no import: importing trl takes seconds) for each of them.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

LIBRARY = "trl"
CHECKED = "==1.16.0"
SYNCED_STEP = "_last_loaded_step"
"""The private attribute: the step whose weights TRL's vLLM engine holds (-1: none pushed yet)."""


def freeze_learning_rate(trainer) -> None:
    """Run the trainer's next optimizer step at learning rate 0 (its scheduler sets the rate again after it)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0


def synced_step(trainer) -> int:
    """The optimizer step whose weights TRL last pushed into its vLLM engine."""
    return int(getattr(trainer, SYNCED_STEP))


def push_weights(trainer) -> None:
    """Push the trainer's current weights into TRL's vLLM engine now."""
    trainer.vllm_generation.sync_weights()


def push_weights_if_stale(trainer) -> None:
    """Push the weights as TRL does before a step, when the engine does not hold this step's yet."""
    if getattr(trainer, SYNCED_STEP) != trainer.state.global_step:
        trainer.vllm_generation.sync_weights()
        setattr(trainer, SYNCED_STEP, trainer.state.global_step)


def vllm_generation(trainer):
    """TRL's vLLM engine wrapper (``VLLMGeneration``: ``mode``, ``generate``, ``sync_weights``)."""
    return trainer.vllm_generation


class _WeightsSyncedElsewhere:
    """Stands in for TRL's vLLM client: the run loads each step's LoRA into its server itself."""

    def sync_weights(self) -> None:
        return None


def use_external_vllm(trainer) -> None:
    """Mark vLLM in use on a trainer that does not drive it, with a no-op weight sync.

    TRL applies its importance-sampling correction (``vllm_importance_sampling_*`` in GRPOConfig,
    default mode sequence_mask, C_max 3) only when it drives vLLM itself; rollouts from a vLLM
    server through ``rollout_func`` need it too, and their weights reach the server as LoRA
    adapters (TRL's own sync needs NCCL/CUDA)."""
    trainer.use_vllm = True
    trainer.vllm_generation = _WeightsSyncedElsewhere()
    setattr(trainer, SYNCED_STEP, -1)


def grpo_source() -> str:
    """The source of the installed trl's GRPOTrainer module, read without importing trl ("" if none)."""
    spec = importlib.util.find_spec(LIBRARY)  # the top-level package only: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(next(iter(spec.submodule_search_locations))) / "trainer" / "grpo_trainer.py"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def missing(source: str | None = None) -> list[str]:
    """The parts this module relies on that GRPOTrainer (in ``source``, default the installed
    trl's ``trl/trainer/grpo_trainer.py``) no longer has."""
    source = grpo_source() if source is None else source
    cls = next((n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "GRPOTrainer"), None)
    if cls is None:
        return ["trl.trainer.grpo_trainer.GRPOTrainer"]
    loads: set[str] = set()
    stores: set[str] = set()
    calls: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            (stores if isinstance(node.ctx, ast.Store) else loads).add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            calls.add(ast.unparse(node.func))
    wanted = {
        f"GRPOTrainer sets self.{SYNCED_STEP}": SYNCED_STEP in stores,
        f"GRPOTrainer reads self.{SYNCED_STEP} (to skip a push)": SYNCED_STEP in loads,
        "GRPOTrainer reads self.use_vllm": "use_vllm" in loads,
        "GRPOTrainer sets self.vllm_generation": "vllm_generation" in stores,
        "GRPOTrainer calls self.vllm_generation.sync_weights()": "self.vllm_generation.sync_weights" in calls,
    }
    return [part for part, present in wanted.items() if not present]
