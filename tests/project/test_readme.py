"""The README's promises: its two set-up commands are the Makefile's, CI runs the test one, and
every Python example in it runs as printed (in one fresh process, each example in its own
namespace, with 4 simulated CPU devices so that the multi-device example splits its batch)."""

import os
import re
import subprocess
import sys

from helpers import REPO


def _read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_the_two_setup_commands_are_the_makefiles_and_ci_runs_the_test_one():
    commands = re.findall(r"```bash\n(.*?)```", _section(_read("README.md"), "The two commands"), re.S)
    assert len(commands) == 1
    lines = [line.split("#")[0].strip() for line in commands[0].splitlines() if line.split("#")[0].strip()]
    assert lines == ["make demo", "make test"]
    makefile = _read("Makefile")
    # Each target starts from a fresh machine: it depends on the install stamp (through build).
    assert re.search(r"^demo: build\n\t\$\(PY\) -m jaxdet demo", makefile, re.M)
    # The layers' import contract (.importlinter) before the tests.
    assert re.search(r"^test: build\n\t\$\(VENV\)/bin/lint-imports --no-cache\n"
                     r"\t\$\(PY\) -m pytest -q -n 2 --dist loadfile tests$", makefile, re.M)
    assert re.search(r"^build: \$\(STAMP\)", makefile, re.M)
    ci = [line.strip() for line in _read(".ci/run").splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test", ci


def test_the_python_examples_run_as_printed():
    blocks = re.findall(r"```python\n(.*?)```", _read("README.md"), re.S)
    assert len(blocks) >= 3
    runner = ("import sys\n"
              "for k, code in enumerate(sys.argv[1:]):\n"
              "    exec(compile(code, f'README example {k}', 'exec'), {'__name__': '__readme__'})\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", runner, *blocks], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "global batch 4 = 4 devices x 1 image" in proc.stdout
