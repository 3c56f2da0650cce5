"""How the benchmarks in experiments/ show a report: the command that reruns them, and the report
printed and appended to a results file. (No JAX here: a parent process that only starts others
can import it.)"""

import shlex
import sys


def command_line(script, argv=None):
    """`script` and the arguments (default: this process's), quoted for a shell."""
    return " ".join([script] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])


def publish(report, out=None):
    """Prints `report` after a blank line and, given `out`, appends it to that markdown file the same way."""
    print("\n" + report, flush=True)
    if out:
        with open(out, "a") as f:
            f.write("\n" + report)
