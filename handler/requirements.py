"""A model's ``code/requirements.txt``: installed when the model loads, visible to that model only.

Each set of requirements gets a folder of its own, ``<deps dir>/<key>``, where
the key hashes the normalised requirements text (with the files it includes
through ``-r``/``-c``), the names and contents of ``code/wheels/*``, the Python
version, the platform and the base environment. Models with the same
requirements share a folder; a second load finds the completion marker and
runs no pip at all. The folder's ``site-packages`` goes first on ``sys.path``
of that model's process only (before its ``inference.py`` is imported), so one
model's packages never leak into another's. A load without requirements.txt
costs one ``os.path.exists``.

How pip installs, and why (measured with pip 23.2 on Python 3.11, a base
environment holding ``tmmebase 1.0``, requirements needing ``tmmebase`` or
``tmmebase>=2``):

- ``pip install --target DIR`` ignores the installed environment: it put
  ``tmmebase 2.0`` into DIR although 1.0 satisfied the requirement. With
  ``timm`` in requirements.txt it would download torch again (GBs).
- ``pip install --prefix DIR`` skips satisfied packages, but on a conflict it
  *uninstalled tmmebase 1.0 from the base environment* before putting 2.0 in
  DIR: one model's install would break every other model (or fail on a
  read-only image).
- Chosen: the folder is a venv over the same interpreter (created in-process,
  no pip in it, ~30 ms) whose ``site-packages`` holds a ``.pth`` that adds the
  base environment's site folders (``site.addsitedir``, so their own ``.pth``
  files, editable installs included, are seen too); pip runs as
  ``<folder>/bin/python -m pip`` (the base's pip, through that ``.pth``).
  pip sees everything installed in the worker: satisfied packages are
  skipped ("Requirement already satisfied: tmmebase in <base>"); a conflicting
  version goes into the folder and the base's copy is left alone ("Not
  uninstalling tmmebase at <base>, outside environment <folder>"). The same
  small install took 0.44 s this way and 0.54 s with ``--prefix`` (one run
  each); a first load with a one-wheel requirements.txt spends ~0.7 s in all
  (venv, pins, pip), a reuse ~0.5 ms. The ``.pth`` is removed once pip
  succeeds: the model process only gets the folder's ``site-packages``.
- Not chosen: ``--target --no-deps`` after a resolution of our own (pip's
  ``--dry-run --report``) means two pip runs and re-implementing what pip
  does when it installs; the overlay gets the same result from one.

Packages already imported in the model process cannot be replaced: with the
fork server, every model process starts from the template, which has torch,
numpy, MMS's worker, the handler and their imports (typing_extensions, psutil,
setuptools' ``_distutils_hack``...) loaded; a second copy in the folder would
be shadowed by the module objects already in ``sys.modules``. pip therefore
gets a constraints file pinning the installed version of every distribution
whose modules are imported at install time, plus torch and numpy always: a
requirements.txt that asks for another torch fails LoadModel with pip's
conflict message instead of downloading a torch that would never be used,
and a package with a torch-pinned dependency (torchvision) resolves to a
version that fits the installed torch.

Sources, in order: ``code/wheels/`` and the container's wheelhouse
(``TORCH_MME_WHEELHOUSE``) with ``--no-index``; if that fails (whatever pip says) and
``TORCH_MME_PIP_INDEX`` is not ``off``, again with the index (pip's own
configuration, or that URL) plus those folders as find-links. Each attempt
installs into a fresh temporary sibling ``.tmp-<key>-...``; on success a
marker is written into it and it is renamed into place. A file lock per
key (``filelock``) makes concurrent loads with the same requirements do one install; a folder
without the marker is deleted and redone, never used. pip's time is bounded by
``TORCH_MME_PIP_TIMEOUT_S`` and by what the load's own timeout leaves (MMS
kills a worker whose load outlives ``timeout_s``). A failure raises
``DependencyInstallError`` with pip's ERROR lines; its full output goes to the
log. ``TORCH_MME_INSTALL_REQUIREMENTS=false`` turns all of it off.

A model may only name what is inside its own ``code/`` folder, and may not
choose where pip fetches from (``check_requirements``, before pip or the key
reads anything): an include, constraint, editable, find-links or local path
outside ``code/``, any index or trusted-host option, ``${VARIABLE}`` and
options other than ``--no-index``, ``--pre``, ``--prefer-binary``,
``--require-hashes``, ``--only-binary``, ``--no-binary`` and ``--hash`` fail
LoadModel naming the line. Requirements by name or by http(s)/VCS URL are
fetched as pip's configuration (or ``TORCH_MME_PIP_INDEX``) says.

Limits: files named by a requirement as a local path (``./pkg``) are not part
of the key (ship wheels in ``code/wheels/`` instead); the wheelhouse's content
is not either; installed console scripts carry the temporary folder's path in
their shebang; folders are never garbage-collected (the deps dir is a cache:
delete it to reclaim the space).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from torch_mme.common import is_inside
from torch_mme.errors import DependencyInstallError
from torch_mme.settings import Settings, default_deps_dir, environment

log = logging.getLogger(__name__)

REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
MARKER = ".torch-mme-complete"
INSTALL_LOG = "torch-mme-install.log"
CONSTRAINTS = "torch-mme-constraints.txt"
BASE_PTH = "_torch_mme_base.pth"
KEY_VERSION = "torch-mme-deps-v1"
KEY_CHARS = 16
ALWAYS_PINNED = ("torch", "numpy")
"""The handler is built on these: never installed a second time, whatever the model asks for."""
LOAD_MARGIN_S = 5
"""Part of the load's timeout left for importing the model after pip, when that timeout bounds pip."""
MAX_REASON = 600
_OFF = {"off", "false", "0", "no", "none"}
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s*=?\s*)(\S+)$")
_COMMENT = re.compile(r"(^|\s+)#.*$")
_DROPPED_PIP_ENV = ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_EDITABLE")


@dataclass(frozen=True)
class Deps:
    """The dependency folder of one set of requirements."""

    path: str
    """``<deps dir>/<key>``."""
    site_packages: str
    """What goes first on the model process's ``sys.path``."""
    installed: bool
    """True when this call ran pip; False when an existing folder was reused."""


def requirements_path(model_dir: str) -> str:
    return os.path.join(model_dir, "code", REQUIREMENTS)


def prepare(model_dir: str, settings: Settings, model_name: str = "?") -> Deps | None:
    """Install (or reuse) the model's requirements and put them first on ``sys.path``; None without any."""
    path = requirements_path(model_dir)
    if not os.path.exists(path):
        return None
    if not settings.install_requirements:
        log.info("requirements.txt of %s ignored (TORCH_MME_INSTALL_REQUIREMENTS=false)", model_name)
        return None
    deps = ensure_installed(os.path.dirname(path), settings, model_name)
    if deps is not None:
        activate(deps.site_packages)
    return deps


def ensure_installed(code_dir: str, settings: Settings, model_name: str = "?") -> Deps | None:
    """The folder holding ``code_dir``'s requirements, installed now unless a complete one exists."""
    check_requirements(code_dir)  # before any file it names is read: the key below inlines them
    text = normalised_requirements(os.path.join(code_dir, REQUIREMENTS))
    if not text:
        log.info("requirements.txt of %s lists nothing to install", model_name)
        return None
    if not os.path.isdir(os.path.join(code_dir, WHEELS)) and satisfied_by_base(text):
        log.info("requirements of %s satisfied by the base environment (no pip)", model_name)
        return None
    key = requirements_key(code_dir, text)
    root = os.path.abspath(settings.deps_dir or default_deps_dir())
    final = os.path.join(root, key)
    done = _complete(final)
    if done is not None:
        log.info("requirements of %s satisfied by %s (no install)", model_name, final)
        return done
    deadline = time.monotonic() + _budget(settings)
    try:
        os.makedirs(root, exist_ok=True)
        with _locked(os.path.join(root, f".{key}.lock"), deadline, model_name):
            done = _complete(final)  # another process may have installed it while we waited
            if done is not None:
                log.info("requirements of %s satisfied by %s (no install)", model_name, final)
                return done
            _remove_leftovers(root, key, final)
            return _install(code_dir, final, settings, deadline, model_name)
    except OSError as exc:
        raise DependencyInstallError(
            f"code/{REQUIREMENTS} could not be installed into {root}: {exc.strerror or exc} "
            "(TORCH_MME_DEPS_DIR must be a writable folder)"
        ) from exc


def satisfied_by_base(text: str) -> bool:
    """True when every line is a plain requirement (``name``, ``name>=1.2``, markers) that an installed
    distribution meets: then pip would only say "Requirement already satisfied" (about 1 s per load), so
    it is not run. Anything else (options, URLs, paths, extras, unknown packages, a version not met) is
    left to pip."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pip vendors the same library
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from importlib import metadata

    for line in text.splitlines():
        if line.startswith("-"):
            return False
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            return False
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if requirement.url or requirement.extras:
            return False
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def activate(site_packages: str) -> None:
    """Put ``site_packages`` first on ``sys.path`` (its ``.pth`` files processed) and drop stale import caches."""
    with contextlib.suppress(ValueError):
        sys.path.remove(site_packages)
    site.addsitedir(site_packages)
    with contextlib.suppress(ValueError):
        sys.path.remove(site_packages)
    sys.path.insert(0, site_packages)
    importlib.invalidate_caches()
    if "pkg_resources" in sys.modules:  # a pkg_resources imported earlier has its own view of sys.path
        with contextlib.suppress(Exception):
            sys.modules["pkg_resources"].working_set.add_entry(site_packages)
    shadowed = sorted(
        name
        for name in _top_level_names(site_packages)
        if name in sys.modules and not (getattr(sys.modules[name], "__file__", None) or "").startswith(site_packages)
    )
    if shadowed:
        log.warning("already imported in this process, so not taken from %s: %s", site_packages, ", ".join(shadowed))


def normalised_requirements(path: str, _depth: int = 0) -> str:
    """The requirements text as pip reads it: no comments, blank lines or continuations; includes inlined."""
    with open(path, encoding="utf-8", errors="replace") as f:
        raw = f.read()
    lines = []
    for line in raw.replace("\\\r\n", "").replace("\\\n", "").splitlines():
        line = _COMMENT.sub("", line).strip()
        if not line:
            continue
        lines.append(line)
        include = _INCLUDE.match(line)
        if include and _depth < 10:
            target = os.path.join(os.path.dirname(path), include.group(2))
            if os.path.isfile(target):
                lines.append(f"[{include.group(2)}]")
                lines.extend(normalised_requirements(target, _depth + 1).splitlines())
    return "\n".join(lines)


_SHORT_OPTIONS = {
    "-r": "--requirement",
    "-c": "--constraint",
    "-e": "--editable",
    "-f": "--find-links",
    "-i": "--index-url",
}
_FILE_OPTIONS = ("--requirement", "--constraint")
"""Options naming another requirements file: it must be a file inside code/ (checked in turn)."""
_PATH_OPTIONS = ("--editable", "--find-links")
"""Options naming a local folder or file: it must be inside code/ (``--editable`` may also be a VCS or http URL)."""
_FETCH_OPTIONS = ("--index-url", "--extra-index-url", "--trusted-host")
"""Where pip fetches from is the server's choice (pip's configuration, TORCH_MME_PIP_INDEX), not a model's."""
_HARMLESS_OPTIONS = ("--no-binary", "--only-binary", "--hash")
_FLAGS = ("--no-index", "--pre", "--prefer-binary", "--require-hashes")
_KNOWN_OPTIONS = (*_FILE_OPTIONS, *_PATH_OPTIONS, *_FETCH_OPTIONS, *_HARMLESS_OPTIONS, *_FLAGS)
_ENV_VARIABLE = re.compile(r"\$\{[A-Z0-9_]+\}")
"""pip expands ``${NAME}`` from its environment in requirements files: a model could send the server's secrets."""
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_requirements(code_dir: str) -> None:
    """Refuse a ``code/requirements.txt`` that reaches outside ``code/`` or tells pip where to fetch from.

    Checked before pip (or anything else) reads a file it names, so no other
    file's content can reach an error message, the log or the dependency
    folder's key and marker: ``-r``/``-c`` (and their long forms) must name
    files inside ``code/``, never URLs; ``-e``, ``--find-links`` and
    requirements given as local paths or ``file:`` URLs must be inside
    ``code/``; ``--index-url``, ``--extra-index-url``, ``--trusted-host``,
    ``--find-links`` URLs and pip's other options are refused, as is
    ``${VARIABLE}`` (pip would expand it from the server's environment). The
    error names the file and line, and quotes only that line.
    """
    real_code = os.path.realpath(code_dir)
    if not is_inside(real_code, os.path.realpath(os.path.dirname(code_dir))):
        raise DependencyInstallError("the model's code/ folder leads outside the model directory")
    _check_file(os.path.join(code_dir, REQUIREMENTS), real_code, 0)


def _check_file(path: str, real_code: str, depth: int) -> None:
    where = os.path.relpath(path, os.path.dirname(real_code)) if is_inside(os.path.realpath(path), real_code) else path
    real = os.path.realpath(path)
    if not is_inside(real, real_code) or not os.path.isfile(real):
        raise DependencyInstallError(f"{where} is not a file inside the model's code/ folder")
    if depth > 10:
        raise DependencyInstallError(f"{where}: requirements files include each other more than 10 deep")
    with open(real, encoding="utf-8", errors="replace") as f:
        raw = f.read()
    for number, line in _logical_lines(raw):
        try:
            _check_line(line, os.path.dirname(real), real_code, depth)
        except DependencyInstallError as exc:
            raise DependencyInstallError(f"{where} line {number}: {exc} ({line!r})") from None


def _logical_lines(raw: str) -> list[tuple[int, str]]:
    """(number of the line it starts on, text) of each line as pip reads it: continuations joined, comments gone."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, physical in enumerate(raw.splitlines(), start=1):
        if not pending:
            start = number
        if physical.endswith("\\"):
            pending += physical[:-1]
            continue
        line = _COMMENT.sub("", pending + physical).strip()
        pending = ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, _COMMENT.sub("", pending).strip()))
    return lines


def _check_line(line: str, base: str, real_code: str, depth: int) -> None:
    if _ENV_VARIABLE.search(line):
        raise DependencyInstallError("${...} is not allowed (pip would fill it in from the server's environment)")
    words = line.split(" ")
    first_option = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    requirement = " ".join(words[:first_option]).strip()
    try:
        options = shlex.split(" ".join(words[first_option:]))
    except ValueError as exc:
        raise DependencyInstallError(f"cannot be read: {exc}") from None
    if requirement:
        _check_requirement(requirement, real_code)
    i = 0
    while i < len(options):
        name, value, i = _option(options, i, has_requirement=bool(requirement))
        if name in _FILE_OPTIONS:
            if _SCHEME.match(value):  # pip reads 'file:/etc/x' as a URL, even if code/file:/etc/x exists
                raise DependencyInstallError(f"{name} must name a file inside code/, not a URL")
            target = os.path.join(base, os.path.expanduser(value))
            if not is_inside(os.path.realpath(target), real_code):
                raise DependencyInstallError(f"{name} names a file outside the model's code/ folder")
            _check_file(target, real_code, depth + 1)
        elif name in _PATH_OPTIONS:
            if _SCHEME.match(value):
                if name == "--find-links" or _is_file_url(value):
                    _check_url(value, real_code, name)
                continue  # --editable git+https://...: a source like any direct URL requirement
            # pip resolves --find-links next to the requirements file, --editable from its working folder (code/)
            target = os.path.join(base if name == "--find-links" else real_code, os.path.expanduser(value))
            if not is_inside(os.path.realpath(target), real_code):
                raise DependencyInstallError(f"{name} names a path outside the model's code/ folder")
        elif name in _FETCH_OPTIONS:
            raise DependencyInstallError(
                f"{name} is not allowed in a model's requirements: the server decides where pip fetches from "
                "(TORCH_MME_PIP_INDEX, TORCH_MME_WHEELHOUSE; ship wheels in code/wheels/)"
            )


def _option(options: list[str], i: int, has_requirement: bool) -> tuple[str, str, int]:
    """The option at ``options[i]`` as (long name, value, index of the next one), as pip's optparse reads it."""
    word = options[i]
    value: str | None = None
    if word.startswith("--"):
        given, _, attached = word.partition("=")
        value = attached if "=" in word else None
        matches = [known for known in _KNOWN_OPTIONS if known == given] or [
            known for known in _KNOWN_OPTIONS if known.startswith(given)
        ]
        name = matches[0] if len(matches) == 1 else ""
    elif word[:2] in _SHORT_OPTIONS:
        name = _SHORT_OPTIONS[word[:2]]
        value = word[2:].lstrip("=") or None
    else:
        name = ""
    if not name or (has_requirement and name != "--hash"):
        raise DependencyInstallError(f"option {word.split('=', 1)[0]} is not allowed in a model's requirements")
    if name in _FLAGS:
        return name, "", i + 1
    if value is None:
        if i + 1 >= len(options):
            raise DependencyInstallError(f"option {name} needs a value")
        return name, options[i + 1], i + 2
    return name, value, i + 1


def _check_requirement(requirement: str, real_code: str) -> None:
    """A requirement given as a local path or a ``file:`` URL must be inside code/ (names and other URLs are fine)."""
    spec = requirement.split(";", 1)[0].strip()
    url = spec.split("@", 1)[1].strip() if "@" in spec and not _SCHEME.match(spec) else spec
    if _SCHEME.match(url):
        if _is_file_url(url):
            _check_url(url, real_code, "a file: URL")
        return
    looks_like_a_path = url.startswith((".", "/", "~")) or "/" in url or os.sep in url
    if looks_like_a_path and not is_inside(
        os.path.realpath(os.path.join(real_code, os.path.expanduser(url))), real_code
    ):
        raise DependencyInstallError("a local path outside the model's code/ folder")


def _is_file_url(url: str) -> bool:
    return url.lower().split("+", 1)[-1].startswith("file:")


def _check_url(url: str, real_code: str, what: str) -> None:
    """A ``file:`` URL must point inside code/; any other URL is refused (it is only called for those that fetch)."""
    from urllib.parse import unquote, urlsplit

    if not _is_file_url(url):
        raise DependencyInstallError(f"{what} URL is not allowed: the server decides where pip fetches from")
    path = unquote(urlsplit(url.split("+", 1)[-1]).path)
    if not is_inside(os.path.realpath(os.path.join(real_code, path)), real_code):
        raise DependencyInstallError(f"{what} points outside the model's code/ folder")


def refuse_pinned_conflicts(code_dir: str, pins: list[tuple[str, str]]) -> None:
    """A requirement that asks for another version of a pinned distribution (torch, numpy, what is imported)
    fails here, in our own words, before pip: pip would fail too, with wording that changes between its versions
    and with whatever constraints its own configuration adds."""
    installed = dict(pins)
    for line in normalised_requirements(os.path.join(code_dir, REQUIREMENTS)).splitlines():
        parsed = _parse_requirement(line)
        if parsed is None:
            continue
        name, contains = parsed
        version = installed.get(name)
        if version is not None and not contains(version):
            raise DependencyInstallError(
                f"code/{REQUIREMENTS} asks for {line}, but {name} {version} is already loaded in the model process "
                "and cannot be replaced (torch, numpy and what the model process has already imported stay at their "
                "installed versions)"
            )


def _parse_requirement(line: str) -> tuple[str, Any] | None:
    """(normalised name, version -> bool) of a requirement by name with a version specifier; None otherwise."""
    if line.startswith(("-", "[")) or "@" in line or "/" in line:
        return None
    try:
        from packaging.requirements import Requirement

        parse = Requirement
    except ImportError:  # not a dependency of ours; pkg_resources is (MMS imports it) and vendors packaging
        from pkg_resources import Requirement

        parse = Requirement.parse
    try:
        parsed = parse(line)
    except ValueError:  # packaging's InvalidRequirement and pkg_resources' RequirementParseError are ValueErrors
        return None
    marker = getattr(parsed, "marker", None)
    if (marker is not None and not marker.evaluate()) or not str(parsed.specifier):
        return None
    return re.sub(r"[-_.]+", "-", parsed.name).lower(), lambda v: parsed.specifier.contains(v, prereleases=True)


def requirements_key(code_dir: str, text: str | None = None) -> str:
    """Hash of what decides an install: requirements, shipped wheels, Python, platform, base environment."""
    if text is None:
        text = normalised_requirements(os.path.join(code_dir, REQUIREMENTS))
    digest = hashlib.sha256()
    for part in (
        KEY_VERSION,
        text,
        sys.implementation.cache_tag or "",
        f"{sys.version_info[0]}.{sys.version_info[1]}",
        sysconfig.get_platform(),
        os.path.realpath(sys.prefix),
    ):
        digest.update(part.encode() + b"\0")
    wheels = os.path.join(code_dir, WHEELS)
    if os.path.isdir(wheels):
        for name in sorted(os.listdir(wheels)):
            file = os.path.join(wheels, name)
            if os.path.isfile(file):
                digest.update(name.encode() + b"\0" + _file_sha256(file).encode() + b"\0")
    return digest.hexdigest()[:KEY_CHARS]


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _complete(folder: str) -> Deps | None:
    """The folder, when its marker says it is complete."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
        site_packages = os.path.join(folder, marker["site_packages"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Deps(folder, site_packages, installed=False) if os.path.isdir(site_packages) else None


def _budget(settings: Settings) -> float:
    """Seconds pip may take: its own limit, and what the load's timeout leaves (MMS kills a load past it)."""
    budget = float(settings.pip_timeout_s)
    if settings.timeout_s > 0:
        budget = min(budget, max(settings.timeout_s - LOAD_MARGIN_S, 1))
    return budget


@contextlib.contextmanager
def _locked(path: str, deadline: float, model_name: str):
    """An exclusive lock on ``path`` (``filelock``: ``flock`` on Linux), waited for until ``deadline``."""
    import filelock  # here, not at the top: ~40 ms to import, and only an install needs it

    lock = filelock.FileLock(path, mode=0o644)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("requirements of %s: waiting for another process installing the same ones", model_name)
        try:
            lock.acquire(timeout=max(deadline - time.monotonic(), 0), poll_interval=0.1)
        except filelock.Timeout:
            raise DependencyInstallError(
                "another model process is still installing the same requirements; try LoadModel again later"
            ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_leftovers(root: str, key: str, final: str) -> None:
    """Under the key's lock: temporary folders of installs that died, and a folder without its marker."""
    for name in os.listdir(root):
        if name.startswith(f".tmp-{key}-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if os.path.lexists(final):
        log.warning("%s has no completion marker (an install was interrupted): installing again", final)
        if os.path.isdir(final) and not os.path.islink(final):
            shutil.rmtree(final, ignore_errors=True)
        else:
            os.remove(final)


def _install(code_dir: str, final: str, settings: Settings, deadline: float, model_name: str) -> Deps:
    """pip into a temporary sibling of ``final``: local wheels first, then (maybe) the index; renamed on success."""
    links = [os.path.join(code_dir, WHEELS), settings.wheelhouse]
    links = [os.path.abspath(p) for p in links if p and os.path.isdir(p)]
    index = settings.pip_index
    attempts: list[list[str]] = []
    if links or index.lower() in _OFF:
        attempts.append(["--no-index"])
    if index.lower() not in _OFF:
        attempts.append(["--index-url", index] if index else [])
    pins = _pins()
    refuse_pinned_conflicts(code_dir, pins)
    started = time.monotonic()
    for n, source in enumerate(attempts):
        where = "no index" if source == ["--no-index"] else (index or "index from pip's configuration")
        log.info(
            "installing requirements of %s into %s (%s; find-links: %s)",
            model_name,
            final,
            where,
            ", ".join(links) or "none",
        )
        command = [
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--no-compile",  # a .pyc would remember the temporary folder's path
            "--no-warn-script-location",
            "-r",
            os.path.join(code_dir, REQUIREMENTS),
            *source,
            *[arg for link in links for arg in ("--find-links", link)],
        ]
        code, output, site_packages = _attempt(command, code_dir, final, pins, deadline)
        if code is None:
            log.error("pip output for %s:\n%s", model_name, output)
            raise DependencyInstallError(
                f"code/{REQUIREMENTS} could not be installed: pip did not finish within {_budget(settings):.0f} s "
                "(TORCH_MME_PIP_TIMEOUT_S, and the load's timeout TORCH_MME_TIMEOUT_SECONDS, bound it); "
                "ship the wheels in code/wheels/"
            )
        if code == 0:
            done = [line for line in output.splitlines() if line.startswith("Successfully installed")]
            log.info(
                "requirements of %s installed into %s in %.1f s%s",
                model_name,
                final,
                time.monotonic() - started,
                f" ({done[-1]})" if done else " (all already satisfied)",
            )
            return Deps(final, site_packages, installed=True)
        if n + 1 < len(attempts):  # whatever pip's words: they change between its versions
            log.info("requirements of %s not installed from local wheels; trying the index:\n%s", model_name, output)
            continue
        log.error("pip failed for %s:\n%s", model_name, output)
        raise DependencyInstallError(f"code/{REQUIREMENTS} could not be installed: {pip_reason(output, pins)}")
    raise AssertionError("unreachable: the last attempt returns or raises")


def _attempt(
    pip_args: list[str], code_dir: str, final: str, pins: list[tuple[str, str]], deadline: float
) -> tuple[int | None, str, str]:
    """One pip run in a fresh temporary folder: (exit status or None on timeout, output, final site-packages).

    On success the folder gets its marker and is renamed to ``final``; otherwise it is removed.
    """
    root, key = os.path.split(final)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the folder from other users sharing the deps dir
        site_packages = _overlay(tmp)
        constraints = os.path.join(tmp, CONSTRAINTS)
        with open(constraints, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}=={version}\n" for name, version in pins))
        python = os.path.join(tmp, "bin", "python")
        code, output = _run([python, *pip_args, "-c", constraints], code_dir, deadline)
        with open(os.path.join(tmp, INSTALL_LOG), "w", encoding="utf-8") as f:
            f.write(output)
        relative = os.path.relpath(site_packages, tmp)
        if code == 0:
            os.remove(os.path.join(site_packages, BASE_PTH))  # the model process gets the folder alone
            with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "site_packages": relative,
                        "requirements": normalised_requirements(os.path.join(code_dir, REQUIREMENTS)),
                        "python": sys.version.split()[0],
                        "installed_at": time.time(),
                    },
                    f,
                )
            os.rename(tmp, final)
        return code, output, os.path.join(final, relative)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _overlay(prefix: str) -> str:
    """A venv at ``prefix`` over this interpreter that also sees this environment's packages; its site-packages."""
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(prefix)
    site_packages = _site_packages(prefix)
    os.makedirs(site_packages, exist_ok=True)
    base = [p for p in site.getsitepackages() if os.path.isdir(p)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        base.append(site.getusersitepackages())
    with open(os.path.join(site_packages, BASE_PTH), "w", encoding="utf-8") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in base) + "\n")
    return site_packages


def _site_packages(prefix: str) -> str:
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    return sysconfig.get_path("purelib", scheme=scheme, vars={"base": prefix, "platbase": prefix})


def _pins() -> list[tuple[str, str]]:
    """(name, version) of torch, numpy and every distribution with a module imported in this process."""
    from importlib import metadata

    imported = {name.split(".")[0] for name in list(sys.modules)}
    names = set(ALWAYS_PINNED)
    with contextlib.suppress(Exception):
        for top, dists in metadata.packages_distributions().items():
            if top in imported:
                names.update(dists)
    pins = {}
    for name in names:
        try:
            version = metadata.version(name)
        except Exception:
            continue
        if version and re.fullmatch(r"[0-9][0-9A-Za-z.+!_-]*", version):
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return sorted(pins.items())


def _run(command: list[str], cwd: str, deadline: float) -> tuple[int | None, str]:
    """Run pip in its own process group: (exit status or None on timeout, its whole output)."""
    env = {k: v for k, v in environment().items() if k not in _DROPPED_PIP_ENV}
    env.pop("PYTHONHOME", None)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output


def pip_reason(output: str, pins: list[tuple[str, str]] | None = None) -> str:
    """pip's ERROR lines (and the conflict it explains) as one line; says why when a pinned distribution is named."""
    lines = output.splitlines()
    reasons: list[str] = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("ERROR:"):
            text = text[len("ERROR:") :].strip()
            if text.startswith("ResolutionImpossible") or not text:
                continue
            reasons.append(text.rstrip("."))
        elif text == "The conflict is caused by:":
            conflict = []
            for follow in lines[i + 1 :]:
                if not follow.startswith((" ", "\t")) or not follow.strip():
                    break
                conflict.append(follow.strip())
            if conflict:
                reasons.append("the conflict is caused by: " + ", ".join(conflict))
    if not reasons:
        tail = [line.strip() for line in lines if line.strip()]
        reasons = tail[-1:] or ["pip failed without output"]
    reason = "; ".join(dict.fromkeys(reasons))
    pinned = {name for name, _ in pins or ()}
    named = {re.sub(r"[-_.]+", "-", word).lower() for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", reason)}
    if pinned & named:
        reason += " (torch, numpy and what the model process has already imported stay at their installed versions)"
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def _top_level_names(site_packages: str) -> set[str]:
    names = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir(site_packages):
            if entry.endswith((".dist-info", ".egg-info", ".pth")) or entry.startswith(("_", ".")):
                continue
            names.add(entry.split(".")[0] if entry.endswith(".py") or ".cpython" in entry else entry)
    return names
