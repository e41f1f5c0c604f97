"""fastae.keep_freed_memory: large tensors made again and again reuse the process's pages instead
of faulting in fresh ones (counted with getrusage), in this process and in the ones it starts."""

import os
import platform
import subprocess
import sys

import pytest

import fastae
from fastae import _malloc

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="keep_freed_memory acts on glibc's malloc only")

# Tensors of 40, 20 and 10 MB (the first above glibc's largest dynamic mmap threshold, 32 MiB) made,
# written and freed as a network's activations are: the page faults of 10 rounds after 20 are counted.
_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    import fastae
    assert fastae.keep_freed_memory()
def rounds(n):
    for _ in range(n):
        for numel in (10_000_000, 5_000_000, 2_500_000):
            torch.empty(numel).fill_(1.0)
rounds(20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FASTAE_KEEP_FREED_MEMORY"}
    env.update(extra)
    return env


def _faults(mode, env=None):
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env=env or _clean_env())
    return int(out.stdout.split()[-1])


@glibc
def test_freed_memory_is_reused_without_page_faults():
    pages = 40_000_000 // 4096  # pages the largest tensor touches
    default, kept = _faults("default"), _faults("keep")
    assert default > 5 * pages  # the largest tensor at least faults its pages in anew each round
    assert kept < pages // 4  # pages kept from the earlier rounds serve these


@glibc
def test_processes_started_after_it_inherit_the_settings():
    child = _clean_env()
    code = ("import os, subprocess, sys, fastae; fastae.keep_freed_memory(); "
            "sys.exit(subprocess.run([sys.executable, '-c', sys.argv[1], 'default']).returncode)")
    out = subprocess.run([sys.executable, "-c", code, _FAULTS], capture_output=True, text=True, check=True, env=child)
    assert int(out.stdout.split()[-1]) < 40_000_000 // 4096 // 4  # as in the test above


@glibc
def test_cli_setting_can_be_turned_off(monkeypatch):
    calls = []
    monkeypatch.setattr(_malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("FASTAE_KEEP_FREED_MEMORY", "0")
    assert _malloc.keep_freed_memory_unless_disabled() is False and calls == []
    monkeypatch.setenv("FASTAE_KEEP_FREED_MEMORY", "1")
    assert _malloc.keep_freed_memory_unless_disabled() is True and calls == [1]


@pytest.mark.parametrize("kwargs", [{"trim": -1}, {"mmap_threshold": 1.5}, {"top_pad": True}, {"trim": 1 << 63}])
def test_bad_sizes_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"keep_freed_memory: {name} must be a non-negative number of bytes"):
        fastae.keep_freed_memory(**kwargs)
