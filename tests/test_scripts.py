"""Every script in scripts/ is an ordinary command-line program: ``--help``
prints its usage and exits 0 within seconds, having written nothing (no
training, no compiling, no results or figures), and ``main(argv)`` can be
imported and called with the arguments.

The scripts run in a copy of the project (its tracked files and the
untracked ones git does not ignore, committed in a git repository of its
own), importing that copy's network3, so a script that writes into the
project shows in the copy's ``git status`` and leaves this checkout alone.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
TIMEOUT = 30  # seconds; --help takes 1-2 s here (importing network3 and numpy)


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """A copy of the project as a git repository with a clean status."""
    try:
        files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard",
                    cwd=ROOT).split("\0")
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"needs the project as a git checkout: {err}")
    copy = tmp_path_factory.mktemp("project")
    for name in filter(None, files):
        if (ROOT / name).is_file():  # (a file deleted but not yet committed: skip)
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    git("init", "-q", cwd=copy)
    git("add", "-A", cwd=copy)
    git("-c", "user.name=test", "-c", "user.email=test@example.invalid",
        "-c", "commit.gpgsign=false", "commit", "-q", "-m", "copy", cwd=copy)
    return copy


def run_in(copy, args):
    """Run ``python args`` in the copy; (completed process, git status
    before, git status after)."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    env.pop("NETWORK3_DATA", None)  # network3's files go to the copy's data/
    before = git("status", "--porcelain", cwd=copy)
    try:
        done = subprocess.run([sys.executable, *args], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        after = git("status", "--porcelain", cwd=copy)
        if after != before:  # leave the copy clean for the next script
            git("checkout", "-q", "--", ".", cwd=copy)
            git("clean", "-q", "-f", "-d", cwd=copy)
    return done, before, after


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_writes_nothing(project_copy, script):
    done, before, after = run_in(project_copy, [f"scripts/{script}", "--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout.lower(), done.stdout
    assert after == before, f"{script} --help changed the project:\n{after}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_main_takes_argv(project_copy, script):
    """``main(argv)`` of the imported script parses ``argv``, not the
    command line: ``main(["--help"])`` prints the usage and exits 0."""
    code = textwrap.dedent(f"""
        import importlib.util, inspect, sys
        sys.argv = ["{script}", "--no-such-option"]  # what main must not read
        sys.path.insert(0, "scripts")
        spec = importlib.util.spec_from_file_location("script", "scripts/{script}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "argv" in inspect.signature(module.main).parameters, "main() takes no argv"
        module.main(["--help"])
        """)
    done, before, after = run_in(project_copy, ["-c", code])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout.lower(), done.stdout
    assert after == before, f"importing {script} and main(['--help']) changed:\n{after}"
