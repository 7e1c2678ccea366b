"""``torch-mme package``: check model directories and pack each into the ``model.tar.gz`` an endpoint loads.

The archive holds the directory's contents (``model.pt``, ``code/inference.py``),
not the directory, with sorted names and zeroed times and owners, so the same
directory always gives the same bytes and a re-upload of an unchanged model
is recognisable by its checksum.

Validation imports ``code/inference.py`` in a child process: the user's code,
and whatever it imports at module level, never runs in this one.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from typing import IO

from handler.user_code import HOOKS, SCRIPT, script_path
from torch_mme.common import format_size, is_inside

ARTIFACTS = ("model.pt", "model.pth")
ARTIFACT_SUFFIXES = (".pt", ".pth", ".pt2", ".safetensors")
SKIPPED_DIRS = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc",)
COMPRESS_LEVEL = 6  # weights hardly compress; 9 costs much more time for almost nothing
_MARKER = "@@torch-mme-validate@@ "

_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hook_probe.py")
"""Run as a script in the child: imports the user's script as the handler does and reports its hooks."""


class InvalidModel(Exception):
    """A model directory that would not load; ``str(self)`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def validate(model_dir: str, timeout: float = 120.0, program: str = SCRIPT) -> list[str]:
    """Problems found (empty when fine), each a line a user can act on.

    Checks what the handler needs at LoadModel: a model artifact or a
    ``model_fn``; a ``code/inference.py`` (or ``code/<program>``, SAGEMAKER_PROGRAM) that imports and
    defines at least one hook; not ``transform_fn`` together with ``input_fn``/``predict_fn``/``output_fn``.
    """
    return _inspect(model_dir, timeout, program)[0]


def _inspect(model_dir: str, timeout: float, program: str) -> tuple[list[str], list[str]]:
    """(problems, hooks the script defines)."""
    if not os.path.isdir(model_dir):
        return [f"{model_dir} is not a directory"], []
    has_artifact = bool(_artifacts(model_dir))
    script = os.path.abspath(script_path(model_dir, program))  # the child runs in model_dir
    shown = "code/" + os.path.relpath(script, os.path.abspath(os.path.join(model_dir, "code")))
    if not os.path.isfile(script):
        return ([] if has_artifact else [_no_artifact()]) + _ambiguous_artifacts(model_dir, []), []
    hooks, error = _import_hooks(model_dir, script, timeout)
    if error is not None:
        return [f"{shown} {error}"], []
    problems = []
    if not hooks:
        problems.append(f"{shown} defines none of the hooks {', '.join(HOOKS)}")
    if "transform_fn" in hooks and {"input_fn", "predict_fn", "output_fn"} & set(hooks):
        problems.append(f"{shown} defines transform_fn and input_fn/predict_fn/output_fn; define one or the other")
    if not has_artifact and "model_fn" not in hooks:
        problems.append(_no_artifact())
    problems += _ambiguous_artifacts(model_dir, hooks)
    return problems, hooks


def _ambiguous_artifacts(model_dir: str, hooks: list[str]) -> list[str]:
    """The default model_fn (here and in the toolkit) needs model.pt or exactly one *.pt/*.pth."""
    candidates = [a for a in _artifacts(model_dir) if a.endswith((".pt", ".pth"))]
    if "model_fn" in hooks or "model.pt" in candidates or len(candidates) < 2:
        return []
    return [f"several .pt/.pth files ({', '.join(candidates)}), no model.pt and no model_fn: which one to load?"]


def _artifacts(model_dir: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(model_dir)
        if (name in ARTIFACTS or name.endswith(ARTIFACT_SUFFIXES)) and os.path.isfile(os.path.join(model_dir, name))
    )


def _torch_archive_kind(path: str) -> str:
    """'torchscript', 'torch.save' (a zip pickle), 'legacy' (a pre-1.6 pickle) or 'other', from the file alone."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        with open(path, "rb") as f:
            return "legacy" if f.read(2) == b"\x80\x02" else "other"
    if any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch.save" if any(n.endswith("/data.pkl") for n in names) else "other"


def compat_report(model_dir: str, program: str = SCRIPT, timeout: float = 120.0) -> tuple[list[str], list[str]]:
    """(problems, differences) for an existing SageMaker PyTorch model folder.

    Problems fail LoadModel here; differences are what would behave differently here than in the SageMaker
    PyTorch container (README, "Differences from the toolkit"), for this folder's hooks and artifacts.
    """
    problems, hooks = _inspect(model_dir, timeout, program)
    if not os.path.isdir(model_dir):
        return problems, []
    notes: list[str] = []
    code = os.path.join(model_dir, "code")
    wanted = os.path.join(code, program if program.endswith(".py") else program.replace(".", "/") + ".py")
    if program != SCRIPT and not os.path.isfile(wanted) and os.path.isfile(os.path.join(code, SCRIPT)):
        notes.append(
            f"SAGEMAKER_PROGRAM is {program}, which this folder lacks: code/{SCRIPT} is used here, "
            "the toolkit would use its default handlers"
        )
    scripts = sorted(n for n in os.listdir(code) if n.endswith(".py")) if os.path.isdir(code) else []
    if scripts and not os.path.isfile(script_path(model_dir, program)):
        notes.append(
            f"code/ holds {', '.join(scripts)} but no {program}: set SAGEMAKER_PROGRAM to the entry point "
            "(what PyTorchModel(entry_point=...) sets), else no hook of yours runs"
        )
    artifacts = [a for a in _artifacts(model_dir) if a.endswith((".pt", ".pth"))]
    if "model_fn" not in hooks and artifacts:
        loaded = "model.pt" if "model.pt" in artifacts else (artifacts[0] if len(artifacts) == 1 else None)
        if loaded is not None and _torch_archive_kind(os.path.join(model_dir, loaded)) != "torchscript":
            notes.append(
                f"{loaded} is not TorchScript: the toolkit's default model_fn cannot load it; here a pickled "
                "module loads only with TORCH_MME_ALLOW_UNSAFE_PICKLE=true, a state_dict needs a model_fn"
            )
    if "transform_fn" not in hooks and "input_fn" not in hooks:
        notes.append(
            "default input_fn: a one-line text/csv body is a 1 x N tensor (the toolkit: N); a CSV cell that "
            "is not a number answers 400 (the toolkit: NaN); application/x-npy bodies are read without pickles; "
            "application/x-npz bodies are dense arrays (the toolkit: a scipy sparse matrix)"
        )
    if "transform_fn" not in hooks and "output_fn" not in hooks:
        notes.append(
            "default output_fn: application/x-npy answers keep the tensor's dtype (the toolkit: float64/int64 "
            "from tolist()); object arrays are not pickled (406)"
        )
    if "predict_fn" in hooks or "transform_fn" in hooks:
        notes.append(
            "the model gets eval() once at load, before your predict_fn/transform_fn (the toolkit calls eval() "
            "only in its default predict_fn); call model.train() in model_warmup_fn to keep training mode"
        )
    if os.path.isfile(os.path.join(code, "requirements.txt")):
        notes.append("code/requirements.txt is installed when the model loads (the toolkit ignores it for MME)")
    return problems, notes


def _no_artifact() -> str:
    return (
        f"no model artifact and no model_fn: no {', '.join(ARTIFACTS)}, *{', *'.join(ARTIFACT_SUFFIXES)} "
        f"and no code/{SCRIPT} defining model_fn"
    )


def _import_hooks(model_dir: str, script: str, timeout: float) -> tuple[list[str], str | None]:
    """(hooks defined, None) or ([], what went wrong), from importing the script in a child process."""
    command = [sys.executable, "-B", _PROBE, os.path.dirname(script), script, _MARKER, json.dumps(HOOKS)]
    # its own session, so that on a timeout whatever the script started goes down with it
    with subprocess.Popen(
        command,
        cwd=model_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return [], f"did not finish importing within {timeout:g} s"
    reports = [line[len(_MARKER) :] for line in stdout.split("\n") if line.startswith(_MARKER)]
    if not reports:
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        return [], f"import ended the process (exit status {child.returncode}){': ' + last if last else ''}"
    result = json.loads(reports[-1])
    if "error" in result:
        return [], f"failed to import: {result['error']}"
    return result["hooks"], None


def pack(model_dir: str, out_path: str, check: bool = True) -> int:
    """Write ``out_path``, a reproducible .tar.gz of the directory's contents; returns its size in bytes.

    Validates first unless ``check`` is false (:class:`InvalidModel`). Leaves
    out ``__pycache__`` and ``.pyc`` files, and ``out_path`` itself when it lies
    inside the directory. Refuses symlinks leading outside the directory and
    anything that is not a file, folder or symlink. The archive is written
    beside ``out_path`` and renamed into place.
    """
    if check:
        problems = validate(model_dir)
        if problems:
            raise InvalidModel(problems)
    root = os.path.realpath(model_dir)
    out_path = os.path.abspath(out_path)
    partial = out_path + ".partial"
    entries = _entries(root, skip={os.path.realpath(out_path), os.path.realpath(partial)})
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    try:
        with open(partial, "wb") as raw:
            _write(raw, root, entries)
        os.replace(partial, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    return os.path.getsize(out_path)


def _entries(root: str, skip: set[str]) -> list[tuple[str, os.stat_result, str | None]]:
    """(relative name, lstat, link target) for everything to pack, sorted by name (a folder before its contents)."""
    found: list[tuple[str, os.stat_result, str | None]] = []
    problems: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for name in os.listdir(os.path.join(root, rel_dir)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(root, rel)
            info = os.lstat(path)
            if path in skip or name.endswith(SKIPPED_SUFFIXES) or (stat.S_ISDIR(info.st_mode) and name in SKIPPED_DIRS):
                continue
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                resolved = os.path.realpath(path)
                if not is_inside(resolved, root):
                    problems.append(f"{rel}: symlink to {target!r} points outside the model directory")
                    continue
                lexical = os.path.normpath(os.path.join(rel_dir, target))
                if os.path.isabs(target) or lexical == ".." or lexical.startswith("../"):
                    # an endpoint refuses absolute targets and any that step out of the folder, even to come back
                    target = os.path.relpath(resolved, os.path.dirname(path))
                found.append((rel, info, target))
            elif stat.S_ISDIR(info.st_mode):
                found.append((rel, info, None))
                pending.append(rel)
            elif stat.S_ISREG(info.st_mode):
                found.append((rel, info, None))
            else:
                problems.append(f"{rel}: not a regular file, folder or symlink")
    if problems:
        raise InvalidModel(sorted(problems))
    return sorted(found, key=lambda entry: entry[0])


def _write(raw: IO[bytes], root: str, entries: list[tuple[str, os.stat_result, str | None]]) -> None:
    # GzipFile with an empty filename and mtime 0 writes no name and no time into the gzip header
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0) as stream,
        tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, info, target in entries:
            member = tarfile.TarInfo(rel)
            member.mtime = 0
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            if target is not None:
                member.type = tarfile.SYMTYPE
                member.linkname = target
                member.mode = 0o777
                tar.addfile(member)
            elif stat.S_ISDIR(info.st_mode):
                member.type = tarfile.DIRTYPE
                member.mode = 0o755
                tar.addfile(member)
            else:
                member.mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
                with open(os.path.join(root, rel), "rb") as f:
                    member.size = os.fstat(f.fileno()).st_size
                    tar.addfile(member, f)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``package`` to the ``torch-mme`` subcommands; :func:`run` executes it."""
    p = subparsers.add_parser(
        "package",
        help="check model directories and pack each into a model.tar.gz (and upload them)",
        description="Check SageMaker PyTorch model directories and pack each into a reproducible model.tar.gz. "
        "One SRC: OUT is the archive's path. Several: OUT is a folder and each SRC becomes OUT/<name>.tar.gz.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="a model directory (model.pt, or code/inference.py ...)")
    p.add_argument("-o", "--output", metavar="OUT", help="the .tar.gz (one SRC) or a folder (several)")
    p.add_argument(
        "--check",
        action="store_true",
        help="pack nothing: report, for each existing SageMaker PyTorch model folder, what would fail here "
        "and what would behave differently than in the SageMaker PyTorch container",
    )
    p.add_argument(
        "--program",
        metavar="SCRIPT",
        help="the user script in code/ (default: $SAGEMAKER_PROGRAM, else inference.py)",
    )
    p.add_argument(
        "--upload",
        metavar="DEST",
        help="then copy each archive to DEST: a local folder or s3://bucket/prefix (boto3; AWS_* settings apply)",
    )
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip importing code/inference.py to check it (symlinks out of the directory are still refused)",
    )


class _Usage(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    """Execute parsed ``package`` arguments: 0 done, 1 a model is invalid or a step failed, 2 a usage error."""
    from torch_mme.settings import Settings

    program = getattr(args, "program", None) or Settings.from_env().program
    if getattr(args, "check", False):
        return _check(args.sources, program)
    if not args.output:
        print("torch-mme package: error: -o/--output is required (or --check)", file=sys.stderr)
        return 2
    try:
        jobs = _plan(args.sources, args.output)
        upload = _upload_target(args.upload) if args.upload else None
    except _Usage as exc:
        print(f"torch-mme package: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(len(jobs), sys.stderr)
    if getattr(args, "validate", True):
        invalid = False
        for src, _ in jobs:
            for problem in validate(src, program=program):
                print(f"torch-mme package: {src}: {problem}", file=sys.stderr)
                invalid = True
        if invalid:
            return 1
    src = step = ""
    try:
        for i, (src, out) in enumerate(jobs, 1):
            step = f"packing {src}"
            size = pack(src, out, check=False)
            progress.step(i, f"packed {os.path.basename(out)} ({format_size(size)})")
        if upload is not None:
            for i, (_, out) in enumerate(jobs, 1):
                step = f"uploading {out}"
                where = upload(out)
                progress.step(i, f"uploaded {os.path.basename(out)} to {where}")
    except InvalidModel as exc:  # found while packing: a symlink out of the directory, a device file
        progress.done()
        for problem in exc.problems:
            print(f"torch-mme package: {src}: {problem}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unreadable file, a full disk, S3 refusing: say which step, no traceback
        progress.done()
        print(f"torch-mme package: error {step}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    progress.done()
    return 0


def _check(sources: list[str], program: str) -> int:
    """``--check``: 1 when a folder would fail LoadModel, else 0; each difference is printed, one a line."""
    failed = False
    for src in sources:
        problems, notes = compat_report(src, program)
        for problem in problems:
            print(f"{src}: FAILS: {problem}")
        for note in notes:
            print(f"{src}: differs: {note}")
        if not problems and not notes:
            print(f"{src}: ok: behaves as in the SageMaker PyTorch container")
        failed = failed or bool(problems)
    return 1 if failed else 0


def _plan(sources: list[str], output: str) -> list[tuple[str, str]]:
    """(model directory, archive path) for each SRC."""
    for src in sources:
        if not os.path.isdir(src):
            raise _Usage(f"{src} is not a directory")
    if len(sources) == 1 and not os.path.isdir(output):
        return [(sources[0], output)]
    if os.path.exists(output) and not os.path.isdir(output):
        raise _Usage(f"with several SRC, OUT must be a folder; {output} is a file")
    names = [os.path.basename(os.path.abspath(src)) for src in sources]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise _Usage(f"several SRC would become the same archive: {', '.join(n + '.tar.gz' for n in twice)}")
    return [(src, os.path.join(output, f"{name}.tar.gz")) for src, name in zip(sources, names, strict=True)]


def _upload_target(dest: str) -> Callable[[str], str]:
    """A function that copies one archive to ``dest`` and returns where it went."""
    if dest.startswith("s3://"):
        bucket, _, prefix = dest[len("s3://") :].partition("/")
        if not bucket:
            raise _Usage(f"{dest}: no bucket; use s3://bucket/prefix")
        try:
            import boto3
        except ImportError:
            raise _Usage("uploading to S3 needs boto3 (pip install boto3)") from None
        client = boto3.client("s3")

        def to_s3(path: str) -> str:
            key = "/".join(part for part in (prefix.strip("/"), os.path.basename(path)) if part)
            client.upload_file(path, bucket, key)
            return f"s3://{bucket}/{key}"

        return to_s3
    if "://" in dest:
        raise _Usage(f"{dest}: --upload takes a local folder or s3://bucket/prefix")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise _Usage(f"{dest} is a file; --upload takes a folder")

    def to_folder(path: str) -> str:
        os.makedirs(dest, exist_ok=True)
        target = os.path.join(dest, os.path.basename(path))
        shutil.copyfile(path, target + ".partial")
        os.replace(target + ".partial", target)
        return target

    return to_folder


class _Progress:
    """``[3/20] packed housing.tar.gz (12.3 MB)``: rewritten in place on a terminal, one line each otherwise."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.in_place = total > 1 and stream.isatty()
        self.open_line = False

    def step(self, i: int, text: str) -> None:
        line = f"[{i}/{self.total}] {text}" if self.total > 1 else text
        if self.in_place:
            self.stream.write(f"\r\x1b[K{line}")
            self.open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False
