"""Development sessions. Each one is a thin call of a command the README documents.

``nox -s tests`` runs the suite on every Python the machine has (3.11, 3.12, 3.13);
``nox -s lint typing examples`` are what CI checks besides; ``nox -s bench`` prints
the benchmark ratios; ``nox -s crash`` runs the long kill -9 harness of the journal,
``nox -s crash_fs`` the kill -9 fuzz of atomic writes with 200 kills.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests", "lint", "typing", "examples"]

PYTHONS = ["3.11", "3.12", "3.13"]


def _env(session: nox.Session, python: str | None = None) -> dict[str, str]:
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    if python is not None:
        # one environment per interpreter, so the project's .venv is left alone
        location = os.path.join(".nox", f"uv-{python}")
        env |= {"UV_PROJECT_ENVIRONMENT": location, "VIRTUAL_ENV": location, "UV_PYTHON": python}
    pyenv = shutil.which("pyenv")
    if pyenv:
        # pyenv shows only the selected interpreter (often through PYENV_VERSION, which
        # its shims set); uv finds the others once they are listed there too
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        selected = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
        wanted = [v for v in versions if any(v.startswith(p + ".") for p in PYTHONS)]
        env["PYENV_VERSION"] = ":".join(dict.fromkeys(selected + wanted))
    return env


@nox.session
@nox.parametrize("python", PYTHONS)
def tests(session: nox.Session, python: str) -> None:
    session.run("uv", "run", "pytest", *session.posargs, env=_env(session, python), external=True)


@nox.session
def lint(session: nox.Session) -> None:
    env = _env(session)
    session.run("uv", "run", "ruff", "check", env=env, external=True)
    session.run("uv", "run", "ruff", "format", "--check", env=env, external=True)


@nox.session
def typing(session: nox.Session) -> None:
    session.run("uv", "run", "mypy", env=_env(session), external=True)


@nox.session
def examples(session: nox.Session) -> None:
    env = _env(session)
    for example in sorted(os.listdir("examples")):
        if example.endswith(".py"):
            session.run("uv", "run", "python", f"examples/{example}", env=env, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark: ``nox -s bench -- --quick``; one: ``nox -s bench -- atomic --dir D``.

    Arguments without a benchmark's name first (``--quick``, ``--rounds N``) go to every
    benchmark. A missed target does not stop the next benchmark; the session fails at
    the end, naming the benchmarks that missed one. ``tracking`` runs itself on Python
    3.12 (in ``.nox/bench-3.12``), where pydatatracker, its predecessor, installs.
    """
    benchmarks = ["journal", "atomic", "tracking", "exporters"]
    args = list(session.posargs)
    if args and args[0] in benchmarks:
        benchmarks, args = [args[0]], args[1:]
    missed = []
    for name in benchmarks:
        try:
            session.run(
                "uv",
                "run",
                "--group",
                "bench",
                "python",
                f"benchmarks/{name}.py",
                *args,
                env=_env(session),
                external=True,
            )
        except nox.command.CommandFailed:
            missed.append(name)
    if missed:
        session.error(f"missed a target (or failed): {', '.join(missed)}")


@nox.session
def crash(session: nox.Session) -> None:
    """The kill -9 harnesses with many more trials than the default suite."""
    env = _env(session) | {"RETRACT_KILL_TRIALS": os.environ.get("RETRACT_KILL_TRIALS", "500")}
    session.run("uv", "run", "pytest", "-m", "slow", *session.posargs, env=env, external=True)


@nox.session
def crash_fs(session: nox.Session) -> None:
    """The atomic-file kill -9 fuzz with 200 kills; prints the torn and leaked counts."""
    env = _env(session) | {"RETRACT_KILLS": os.environ.get("RETRACT_KILLS", "200")}
    session.run(
        "uv",
        "run",
        "pytest",
        "-s",
        "tests/fs/test_kill_fuzz.py",
        *session.posargs,
        env=env,
        external=True,
    )
