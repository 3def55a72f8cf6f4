"""The child side of the fault-injection tests: runs the CLI's main(argv) in a process forked from a
forkserver that has imported genlab, torch and scikit-learn once (a fresh interpreter per run would cost
seconds of imports each)."""
import os
import sys


def warm() -> None:
    """Imports (and torch's lazily imported optimizer machinery) paid once in the forkserver."""
    import torch

    import genlab.api  # noqa: F401
    import genlab.cli  # noqa: F401
    from genlab.data import load_dataset

    load_dataset("digits", "train")
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def run(argv, env, log_path):
    """main(argv) with ``env`` added to the environment, stdout and stderr to ``log_path``; exits with its status."""
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    import torch

    torch.set_num_threads(1)
    from genlab.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


warm()
