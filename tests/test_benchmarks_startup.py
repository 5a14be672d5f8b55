"""benchmarks/startup.py's accounting of a cold start: the kernels left in Triton's cache, the workers' lines."""

from benchmarks.startup import compiled_kernels, precompile_lines


def test_compiled_kernels_counts_each_kernels_variants_from_their_binaries(tmp_path):
    for folder, name in [("a1", "_skinny_kernel"), ("b2", "_skinny_kernel"), ("c3", "_split_kernel")]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.cubin").write_bytes(b"\0")
        (tmp_path / folder / f"{name}.json").write_text("{}")  # metadata beside it is not a variant
    (tmp_path / "d4").mkdir()
    (tmp_path / "d4" / "__grp___merge_kernel.json").write_text("{}")  # a group file without a binary
    assert compiled_kernels(tmp_path) == {"_skinny_kernel": 2, "_split_kernel": 1}
    assert compiled_kernels(tmp_path / "missing") == {}


def test_precompile_lines_keeps_only_the_workers_progress():
    stderr = (
        "W1207 some warning\n"
        "precompile: block 4, cache 256 positions, dynamic: 5.10 s\n"
        "precompile: 2 shapes in 6.0 s\n"
    )
    assert precompile_lines(stderr) == [
        "precompile: block 4, cache 256 positions, dynamic: 5.10 s",
        "precompile: 2 shapes in 6.0 s",
    ]
