"""RunConfig's fields in sections: --help lists them by section, a config file may nest them
under the section names, and a flat file (every config written before) reads as it always did."""

import argparse

import pytest

from espl_bench.config import SECTIONS, RunConfig, add_run_flags, build_config, load_file
from espl_bench.errors import ConfigError


def test_every_field_is_in_exactly_one_section():
    listed = [name for names in SECTIONS.values() for name in names]
    assert sorted(listed) == sorted(RunConfig.model_fields) and len(listed) == len(set(listed))


@pytest.mark.parametrize("suffix, nested", [
    (".toml", '[task]\nenv = "espl/Arithmetic-v0"\nseed = 3\n[loop]\nbatch-size = 4\n[training]\nlearning_rate = 1e-4\n'),
    (".yaml", "task:\n  env: espl/Arithmetic-v0\n  seed: 3\nloop:\n  batch-size: 4\ntraining:\n  learning_rate: 0.0001\n"),
])
def test_a_sectioned_file_reads_as_the_flat_one(tmp_path, suffix, nested):
    flat, sectioned = tmp_path / f"flat{suffix}", tmp_path / f"sectioned{suffix}"
    flat.write_text('env = "espl/Arithmetic-v0"\nseed = 3\nbatch_size = 4\nlearning_rate = 1e-4\n' if suffix == ".toml"
                    else "env: espl/Arithmetic-v0\nseed: 3\nbatch_size: 4\nlearning_rate: 0.0001\n")
    sectioned.write_text(nested)
    assert load_file(str(sectioned)) == load_file(str(flat))
    cfg = build_config(load_file(str(sectioned)))
    assert (cfg.seed, cfg.batch_size, cfg.learning_rate) == (3, 4, 1e-4)


def test_a_field_under_the_wrong_section_is_one_clear_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[task]\nenv = "espl/Arithmetic-v0"\nlearning_rate = 1e-4\n')
    with pytest.raises(ConfigError, match=r"'learning_rate' is not in section \[task\]; fix: move it under \[training\]"):
        load_file(str(path))


def test_help_lists_the_flags_by_section():
    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    text = parser.format_help()
    starts = [text.index(f"\n{section} options:") for section in SECTIONS]
    assert starts == sorted(starts)  # the sections in order
    ends = [*starts[1:], len(text)]
    for (section, names), start, end in zip(SECTIONS.items(), starts, ends):
        block = text[start:end]
        assert all(f"--{name.replace('_', '-')}" in block for name in names), section
