"""The container images install what CI installs, and the cluster files name only images built here.

Reads docker/Dockerfile.*, .ci/run, pyproject.toml and cluster/*.yaml; builds nothing (no docker daemon or
registry needed).
"""

import pathlib
import re
import shlex
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SELF = canonicalize_name(PYPROJECT["project"]["name"])
VERSION = PYPROJECT["project"]["version"]
# What .ci/run installs for the test suite alone; the images leave it out (their comments point here):
# Debian's prometheus for its promtool (the alert-rule tests) and Chromium with its driver (the web page's
# browser test); the musicnn wheel, whose TF checkpoint is only the reference the package's own musicnn weights
# are checked against bit for bit (tests/unit/test_evaluation.py); the [test] extra's own packages (pytest,
# ruff, ...), which it adds to the roles that the images install with [all].
TEST_ONLY_APT = {"prometheus", "chromium", "chromium-driver"}
TEST_ONLY_PIP = {"musicnn"}
TEST_ONLY_EXTRA = "test"
OPERATORS = {"&&", "||", ";", "|", "&"}
OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f"}


# ---- parsing --------------------------------------------------------------------------------------------


def _commands(shell: str) -> list[list[str]]:
    """A shell line as its simple commands (split at &&, ;, |), each a list of words, quotes honoured."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def _apt_installs(commands) -> set[str]:
    packages = set()
    for words in commands:
        if "apt-get" in words and "install" in words[words.index("apt-get") :]:
            after = words[words.index("install", words.index("apt-get")) + 1 :]
            packages |= {w for w in after if not w.startswith("-")}
    return packages


def _pip_installs(commands) -> list[dict]:
    """Every `pip install`: its requirements, its local paths with extras, its flags and options, in order."""
    installs = []
    for words in commands:
        if "pip" not in words or words[words.index("pip") + 1 : words.index("pip") + 2] != ["install"]:
            continue
        args = words[words.index("pip") + 2 :]
        install = {"reqs": [], "local": [], "flags": set(), "options": {}}
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in OPTIONS_WITH_VALUE:
                install["options"][arg] = args[i + 1]
                i += 2
                continue
            if arg in ("-e", "--editable"):
                arg = args[i + 1]
                install["flags"].add("-e")
                i += 1
            if arg.startswith("-"):
                install["flags"].add(arg)
            elif arg.startswith((".", "/")):
                path, _, extras = arg.partition("[")
                install["local"].append((path, {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}))
            else:
                install["reqs"].append(Requirement(arg))
            i += 1
        installs.append(install)
    return installs


def _ci_commands():
    return _commands(" ".join(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip" in line))


class Dockerfile:
    def __init__(self, path: pathlib.Path):
        self.text = path.read_text()
        joined = re.sub(r"\\\n", " ", self.text)
        self.instructions = [
            tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip() and line[0] != "#"
        ]
        self.args = {}
        for keyword, rest in self.instructions:
            if keyword == "ARG" and "=" in rest:
                name, value = rest.split("=", 1)
                self.args[name] = self.expand(value)
        self.base = next(self.expand(rest) for keyword, rest in self.instructions if keyword == "FROM")
        runs = [re.sub(r"--mount=\S+", "", rest) for keyword, rest in self.instructions if keyword == "RUN"]
        self.commands = [c for run in runs for c in _commands(self.expand(run))]
        header = re.search(r"^# Image: (\S+)$", self.text, re.M)
        self.image = header and header.group(1)
        self.labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', self.text))

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)


def _extras_closure(extras: set[str], skip_own_packages_of=()) -> dict[str, Requirement]:
    """The requirements an install with these extras pulls from pyproject, self-references followed."""
    table = PYPROJECT["project"]["optional-dependencies"]
    found, todo, seen = {}, list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in table, f"pyproject.toml has no extra [{extra}] (pip would only warn)"
        for spec in table[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == SELF:
                todo.extend(req.extras)
            elif extra not in skip_own_packages_of:
                found[canonicalize_name(req.name)] = req
    return found


def _cluster_images() -> dict[str, list[tuple[str, bool]]]:
    """image name -> [(file, is_gpu_pod)] for every image the cluster files name."""
    images = {}

    def walk(node, where, gpu=False):
        if isinstance(node, dict):
            resources = node.get("resources", {})
            requests = resources.get("requests", {}) if isinstance(resources, dict) else {}
            gpu = gpu or "nvidia.com/gpu" in (requests or {})
            for key, value in node.items():
                if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                    images.setdefault(value, []).append((where, gpu if key == "image" and "name" in node else None))
                else:
                    walk(value, where, gpu)
        elif isinstance(node, list):
            for item in node:
                walk(item, where, gpu)

    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc, path.name)
    return images


CI = _ci_commands()
CI_PIP = _pip_installs(CI)
IMAGES = {kind: Dockerfile(path) for kind, path in DOCKERFILES.items()}
RAY_PIN = next(
    str(Requirement(s).specifier).removeprefix("==")
    for extra in PYPROJECT["project"]["optional-dependencies"].values()
    for s in extra
    if canonicalize_name(Requirement(s).name) == "ray"
)


def _package_install(installs: list[dict]) -> dict:
    (install,) = [i for i in installs if i["local"]]
    return install


def _pip_names(installs: list[dict]) -> set[str]:
    return {canonicalize_name(r.name) for i in installs for r in i["reqs"]}


def _torch_install(installs: list[dict]) -> dict:
    (install,) = [i for i in installs if any(r.name == "torch" for r in i["reqs"])]
    return install


# ---- the checks ------------------------------------------------------------------------------------------


def test_ci_is_parsed():
    assert {"fluidsynth", "timgm6mb-soundfont"} <= _apt_installs(CI)
    assert any(r.name == "torch" for i in CI_PIP for r in i["reqs"])
    assert any(i["local"] for i in CI_PIP)
    # The test-only names are what .ci/run installs, so none exempts an install that has since changed name.
    ((_, ci_extras),) = _package_install(CI_PIP)["local"]
    assert TEST_ONLY_APT <= _apt_installs(CI) and TEST_ONLY_PIP <= _pip_names(CI_PIP) and TEST_ONLY_EXTRA in ci_extras


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_installs_the_apt_packages_ci_installs(kind):
    missing = (_apt_installs(CI) - TEST_ONLY_APT) - _apt_installs(IMAGES[kind].commands)
    assert not missing, f"{DOCKERFILES[kind].name} does not apt-get install {sorted(missing)}"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_pins_what_ci_pins(kind):
    installs = _pip_installs(IMAGES[kind].commands)
    for req in [r for i in CI_PIP for r in i["reqs"] if canonicalize_name(r.name) not in TEST_ONLY_PIP]:
        matches = [i for i in installs for r in i["reqs"] if r.name == req.name and r.specifier == req.specifier]
        assert matches, f"{DOCKERFILES[kind].name} does not pip install {req}"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_package_is_installed_with_the_roles_ci_installs(kind):
    install = _package_install(_pip_installs(IMAGES[kind].commands))
    ((_path, extras),) = install["local"]
    ((_, ci_extras),) = _package_install(CI_PIP)["local"]
    needed = _extras_closure(ci_extras, skip_own_packages_of={TEST_ONLY_EXTRA})
    installed = _extras_closure(extras)
    assert not set(needed) - set(installed), f"{extras} lacks {sorted(set(needed) - set(installed))}"
    assert "-e" not in install["flags"], "an image installs the package, not an editable source tree"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_leaves_out_what_only_the_tests_need(kind):
    commands = IMAGES[kind].commands
    installs = _pip_installs(commands)
    ((_, extras),) = _package_install(installs)["local"]
    test_tools = {
        canonicalize_name(Requirement(s).name) for s in PYPROJECT["project"]["optional-dependencies"][TEST_ONLY_EXTRA]
    }
    assert not _apt_installs(commands) & TEST_ONLY_APT, DOCKERFILES[kind].name
    assert not _pip_names(installs) & TEST_ONLY_PIP, DOCKERFILES[kind].name
    assert not set(_extras_closure(extras)) & (TEST_ONLY_PIP | test_tools - {SELF}), extras


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_torch_is_installed_first_for_the_images_hardware_and_never_replaced(kind):
    image = IMAGES[kind]
    installs = _pip_installs(image.commands)
    torch = _torch_install(installs)
    package = _package_install(installs)
    assert installs.index(torch) < installs.index(package), "torch must be in place before the package's install"
    pins = {r.name: str(r.specifier) for r in torch["reqs"]}
    assert set(pins) == {"torch", "torchvision"}
    # The package's install is constrained to those same pins, so pip never swaps in another torch build.
    constraints = package["options"].get("-c") or package["options"].get("--constraint")
    assert constraints, "the package install must be constrained to the torch already installed"
    written = next(w for c in image.commands if c[0] == "printf" and c[-1] == constraints for w in c[1:2])
    assert dict(line.split("==") for line in written.split("\\n") if line) == {
        name: spec.removeprefix("==") for name, spec in pins.items()
    }
    for install in installs:
        if install is not torch:
            assert not {r.name for r in install["reqs"]} & {"torch", "torchvision"}, install
            assert not {"-U", "--upgrade", "--force-reinstall", "--ignore-installed"} & install["flags"], install
    index = torch["options"].get("--index-url") or torch["options"].get("-i")
    if kind == "cpu":
        assert index.endswith("/whl/cpu"), index
    else:
        cuda = re.search(r"-(cu\d+)$", image.base).group(1)
        assert index.endswith(f"/whl/{cuda}"), f"torch for {cuda} (the base image), got {index}"
        assert "+cpu" not in image.text and "whl/cpu" not in image.text, "the CUDA image installs a CPU torch"
        assert "torch.version.cuda" in image.text, "the CUDA image checks the torch build it got"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_base_image_is_rays_image_of_the_pinned_release(kind):
    base = IMAGES[kind].base
    suffix = "cpu" if kind == "cpu" else r"cu12\d"
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_PIN)}-py311-{suffix}", base), base
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for version in re.findall(r"rayVersion:\s*\"?([\d.]+)", path.read_text()):
            assert version == RAY_PIN, f"{path.name}: rayVersion {version}, images carry Ray {RAY_PIN}"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_names_itself_once_with_the_package_version(kind):
    image = IMAGES[kind]
    assert image.image, f"{DOCKERFILES[kind].name}: no '# Image: NAME' header"
    assert image.image.endswith(f"video-robin:{VERSION}-{kind}"), image.image
    assert image.labels["org.opencontainers.image.ref.name"] == image.image
    assert image.labels["org.opencontainers.image.version"] == VERSION
    assert f"-t {image.image} " in image.text, "the header's build command tags the image it names"


def test_every_image_the_cluster_files_name_is_built_here():
    built = {image.image: kind for kind, image in IMAGES.items()}
    named = _cluster_images()
    assert named, "no image in cluster/*.yaml"
    for name, uses in named.items():
        assert name in built, f"{name} ({sorted({u[0] for u in uses})}) is built by no Dockerfile in docker/"
        for where, gpu_pod in uses:
            if gpu_pod is not None:  # a KubeRay container: GPU pods run the CUDA image, the others the CPU one
                assert built[name] == ("cuda" if gpu_pod else "cpu"), f"{where}: {name} on a GPU pod: {gpu_pod}"


def test_readmes_name_the_images_as_the_dockerfiles_do():
    built = {image.image for image in IMAGES.values()}
    for readme in (ROOT / "README.md", ROOT / "cluster" / "README.md"):
        named = set(re.findall(r"[\w.-]+(?:/[\w.-]+)*/video-robin:[\w.-]*\w", readme.read_text()))
        assert named <= built, f"{readme.relative_to(ROOT)} names {sorted(named - built)}"
    assert all(name in (ROOT / "README.md").read_text() for name in built), "README.md names each image"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_build_context_leaves_out_the_virtualenv_and_git(kind):
    ignore = (DOCKERFILES[kind].parent / f"{DOCKERFILES[kind].name}.dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignore)
