"""Packaging, for real: the .deb is built, installed with apt, activated, used and purged.

The fast tests check that every packaging file agrees with the one version in
``hecated/__init__.py`` and that the distro units keep their contract. The slow
ones build the .deb from a clean tree with packaging/debian/build.sh, install
it with ``apt-get install ./hecated_*.deb`` (Debian's python3-werkzeug &c.),
start ``hecate.socket`` from /usr/lib/systemd/user/ under a private systemd
user manager, register plugins with curl and /usr/bin/hecatectl, check the
tree on disk and purge the package. They need root and Debian (CI has both);
the package is purged at teardown whatever happened.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import short_tempdir, wait_for
from packaging_support import (
    APT_LOCK,
    SYS_PATH,
    apt_env,
    is_installed,
    main_pid,
    purge,
    run,
    system_env,
    user_manager,
)
from systemd_support import UserManager

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SUBDIRS = ("sqlite", "reckon-db", "sockets", "run", "connectors")
USER_UNITS = Path("/usr/lib/systemd/user")


def source_version() -> str:
    tree = ast.parse((REPO / "hecated" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "__version__" for t in node.targets
        ):
            return node.value.value  # type: ignore[attr-defined]
    raise AssertionError("no __version__ in hecated/__init__.py")


VERSION = source_version()


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(path.read_text())
    return parser


# -- fast: the files agree with each other ---------------------------------------------


def test_rpm_spec_and_pkgbuild_carry_the_source_version() -> None:
    spec = (PACKAGING / "rpm" / "hecated.spec").read_text()
    assert re.search(rf"^Version:\s*{re.escape(VERSION)}\s*$", spec, re.M), "spec Version"
    pkgbuild = (PACKAGING / "arch" / "PKGBUILD").read_text()
    assert re.search(rf"^pkgver={re.escape(VERSION)}\s*$", pkgbuild, re.M), "PKGBUILD pkgver"


def runtime_requirements() -> dict[str, str]:
    """pyproject's ``dependencies`` as {name: lower bound}; the packages must list each."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:>=\s*([0-9][^,;\s]*))?\s*", dep)
        assert match, f"{dep!r}: keep dependencies as 'name>=lower-bound'"
        found[match[1].lower().replace("_", "-")] = match[2] or ""
    return found


def test_every_runtime_dependency_is_declared_by_each_package() -> None:
    # A new dependency in pyproject.toml must reach the .deb (Depends, and
    # Build-Depends for the build's import check), the Makefile's apt list,
    # the RPM spec and the PKGBUILD, or the distro builds break or lie.
    control = (PACKAGING / "debian" / "control").read_text()
    binary = control[control.index("\nPackage:") :]
    source = control[: control.index("\nPackage:")]
    spec = (PACKAGING / "rpm" / "hecated.spec").read_text()
    pkgbuild = (PACKAGING / "arch" / "PKGBUILD").read_text()
    makefile = (REPO / "Makefile").read_text()
    for name, low in runtime_requirements().items():
        deb = f"python3-{name}"
        bound = rf"\s*\(>=\s*{re.escape(low)}\)" if low else ""
        assert re.search(rf"\b{deb}{bound}", binary), f"debian/control Depends: {deb} {low}"
        assert re.search(rf"\b{deb}{bound}", source), f"Build-Depends: {deb} {low}"
        assert re.search(rf"\s{deb}(\s|$)", makefile, re.M), f"Makefile PACKAGING_APT: {deb}"
        rpm_bound = rf"\s*>=\s*{re.escape(low)}" if low else ""
        assert re.search(rf"^Requires:\s*{deb}{rpm_bound}\s*$", spec, re.M), f"spec: {deb}"
        assert f"'python-{name}'" in pkgbuild, f"PKGBUILD depends: python-{name}"


def test_debian_changelog_is_generated_not_kept() -> None:
    # The .deb's version comes from __init__.py through build.sh; a stale
    # checked-in changelog would be a second place for it.
    assert not (PACKAGING / "debian" / "changelog").exists()
    assert "__version__" in (PACKAGING / "debian" / "build.sh").read_text()


def test_units_run_the_distro_binary_and_never_listen_on_tcp() -> None:
    service = unit(REPO / "units" / "hecate.service")
    assert service["Service"]["ExecStart"].split()[0] == "/usr/bin/hecated"
    socket_unit = unit(REPO / "units" / "hecate.socket")
    text = (REPO / "units" / "hecate.socket").read_text()
    listen = [
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ListenStream=")
    ]
    # The registry's socket, and hecate-tui's (it looks for ~/.hecate/daemon.sock).
    assert listen == ["%h/.hecate/hecate-daemon/sockets/api.sock", "%h/.hecate/daemon.sock"]
    assert socket_unit["Socket"]["FileDescriptorName"] == "api"  # both served (api_sockets)
    assert socket_unit["Socket"]["SocketMode"] == "0600"


K8S_VERSION = "1.31.0"  # a k3s release line the bundled schemas cover


def k8s_docs() -> list[dict]:
    import yaml

    text = (PACKAGING / "k8s" / "daemonset.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def test_k8s_manifest_validates_against_the_kubernetes_schema() -> None:
    import kubernetes_validate

    docs = k8s_docs()
    assert {d["kind"] for d in docs} == {"Namespace", "DaemonSet"}
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently dropped
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_can_fail() -> None:
    import kubernetes_validate

    ds = next(d for d in k8s_docs() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_k8s_daemonset_keeps_the_convention() -> None:
    ds = next(d for d in k8s_docs() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["HECATE_SOCKET_PATH"].endswith("/.hecate/hecate-daemon/sockets/api.sock")
    assert container["command"] == ["/usr/bin/hecated"]
    assert container["args"][0] == "serve"  # standalone: hecated binds the socket itself
    assert "--idle-timeout" not in container["args"]
    assert container["image"].endswith(f":{VERSION}")
    hecate = next(v for v in pod["volumes"] if "hostPath" in v)
    assert hecate["hostPath"]["path"].endswith("/.hecate")
    mount = next(m for m in container["volumeMounts"] if m["name"] == hecate["name"])
    assert env["HECATE_SOCKET_PATH"].startswith(mount["mountPath"] + "/")
    assert env["HOME"] + "/.hecate" == mount["mountPath"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert "ports" not in container  # never TCP


# -- slow: build, install, activate, purge ---------------------------------------------

needs_root_debian = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/dpkg").exists(),
    reason="installing a .deb needs root on Debian",
)


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    out = short_tempdir("hdeb")
    try:
        run([str(PACKAGING / "debian" / "build.sh"), "--out", str(out)], timeout=900)
        debs = sorted(out.glob(f"hecated_{VERSION}_all.deb"))
        assert len(debs) == 1, list(out.iterdir())
        yield debs[0]
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)


def install(deb: Path) -> None:
    run(["apt-get", *APT_LOCK, "install", "-y", str(deb)], env=apt_env(), timeout=900)


@pytest.fixture(scope="module")
def package_cleanup(deb: Path) -> Iterator[Path]:
    """Purged before the module's first install (a leftover of an interrupted run) and
    after its last test, whatever the tests did in between."""
    purge("hecated")
    try:
        yield deb
    finally:
        purge("hecated")


@pytest.fixture
def installed(package_cleanup: Path) -> Path:
    """The package, installed: each test that needs it owns that precondition, so a test
    that purges it (test_purge_removes_the_package) cannot break one that runs later."""
    if not is_installed("hecated"):
        install(package_cleanup)
    return package_cleanup


@pytest.fixture
def manager() -> Iterator[UserManager]:
    with user_manager() as um:
        yield um


def curl(sock: Path, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    cmd = ["curl", "-sS", "--unix-socket", str(sock), "-X", method, "-w", "\n%{http_code}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    proc = run([*cmd, f"http://localhost{path}"], env={"PATH": SYS_PATH})
    payload, _, code = proc.stdout.rpartition("\n")
    return int(code), json.loads(payload) if payload else None


def check_namespace(root: Path, name: str) -> None:
    base = root / name
    assert stat.S_IMODE(base.stat().st_mode) == 0o700, oct(base.stat().st_mode)
    for sub in SUBDIRS:
        assert (base / sub).is_dir(), base / sub
        assert not (base / sub).is_symlink()


@pytest.mark.slow
@needs_root_debian
def test_deb_contents_and_metadata(deb: Path) -> None:
    info = run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"]).stdout
    assert f"Version: {VERSION}\n" in info
    for dep in ("python3-werkzeug", "python3-waitress", "python3-watchdog", "python3-systemd"):
        assert dep in info, info
    assert "python3-tomli-w" in info and "python3-sdnotify" in info
    assert "python3-jeepney" in info
    files = run(["dpkg-deb", "-c", str(deb)]).stdout
    for path in (
        "./usr/bin/hecated",
        "./usr/bin/hecatectl",
        "./usr/lib/systemd/user/hecate.socket",
        "./usr/lib/systemd/user/hecate.service",
        "./usr/share/man/man1/hecated.1.gz",
    ):
        assert re.search(rf" {re.escape(path)}$", files, re.M), path
    # the ecosystem's name for the primary: an alias symlink beside the unit
    alias = "./usr/lib/systemd/user/hecate-daemon.service -> hecate.service"
    assert re.search(rf"^l.* {re.escape(alias)}$", files, re.M), files
    # no vendored copies of the libraries Debian ships
    assert not re.search(
        r"dist-packages/(werkzeug|waitress|watchdog|tomli_w|sdnotify|jeepney)/", files
    )


@pytest.mark.slow
@needs_root_debian
def test_installed_package_uses_debian_python_and_libraries(installed: Path) -> None:
    home = short_tempdir("hpk")
    try:
        env = system_env(home)
        assert run(["/usr/bin/hecated", "--version"], env=env).stdout.strip() == (
            f"hecated {VERSION}"
        )
        shebang = Path("/usr/bin/hecated").read_text().splitlines()[0]
        assert shebang == "#!/usr/bin/python3"
        where = run(
            [
                "/usr/bin/python3",
                "-c",
                "import hecated, werkzeug, waitress, watchdog, tomli_w, sdnotify, systemd.daemon;"
                "import jeepney;"
                "print(hecated.__file__, werkzeug.__file__, waitress.__file__, watchdog.__file__,"
                " jeepney.__file__)",
            ],
            env=env,
        ).stdout.split()
        assert all(p.startswith("/usr/lib/python3/dist-packages/") for p in where), where
        # Installing enables nothing for anyone: units are opt-in per user.
        assert not Path("/etc/systemd/user/sockets.target.wants/hecate.socket").exists()
        service = unit(USER_UNITS / "hecate.service")
        assert service["Service"]["ExecStart"].split()[0] == "/usr/bin/hecated"
        assert os.readlink(USER_UNITS / "hecate-daemon.service") == "hecate.service"
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.mark.slow
@needs_root_debian
def test_installed_hecated_standalone(installed: Path) -> None:
    """/usr/bin/hecated on Debian's werkzeug/watchdog, started by hand, used by curl and ctl."""
    home = short_tempdir("hst")
    env = system_env(home)
    sock = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    log = (home / "hecated.log").open("wb")
    proc = subprocess.Popen(["/usr/bin/hecated", "serve"], env=env, stdout=log, stderr=log, cwd="/")
    try:
        wait_for(lambda: proc.poll() is not None or sock.exists(), timeout=20)
        assert proc.poll() is None, (home / "hecated.log").read_text()
        code, health = curl(sock, "GET", "/health")
        assert code == 200 and health["version"] == VERSION, health
        code, error = curl(sock, "GET", "/api/no-such-thing")  # Werkzeug 2.2's error path
        assert code == 404 and error["code"] == "not_found" and error["ok"] is False, error
        code, body = curl(sock, "POST", "/api/plugins/register", {"name": "curl-plugin"})
        assert code == 201, body
        run(["/usr/bin/hecatectl", "register", "ctl-plugin", "--version", "2.0"], env=env)
        names = {
            p["name"]
            for p in json.loads(run(["/usr/bin/hecatectl", "--json", "list"], env=env).stdout)
        }
        assert {"curl-plugin", "ctl-plugin"} <= names
        for name in ("hecate-daemon", "curl-plugin", "ctl-plugin"):
            check_namespace(home / ".hecate", name)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.mark.slow
@needs_root_debian
def test_socket_activation_from_installed_units(installed: Path, manager: UserManager) -> None:
    """The package's hecate.socket, started by a real user manager, activates /usr/bin/hecated."""
    home = manager.home
    sock = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    state = manager.systemctl("show", "-P", "FragmentPath", "hecate.socket").stdout.strip()
    assert state == "/usr/lib/systemd/user/hecate.socket"
    manager.systemctl("start", "hecate.socket")
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

    code, body = curl(sock, "POST", "/api/plugins/register", {"name": "curl-plugin"})
    assert code == 201, (body, manager.service_log())
    assert body["base_dir"] == str(home / ".hecate" / "curl-plugin")
    assert manager.systemctl("is-active", "hecate.service").stdout.strip() == "active"
    pid = main_pid(manager, "hecate.service")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"/usr/bin/hecated" in cmdline, cmdline
    # the ecosystem's name is the same unit, not a second service
    assert manager.prop("hecate-daemon.service", "Id") == "hecate.service"
    assert main_pid(manager, "hecate-daemon.service") == pid
    # an alias in the vendor dir does not enable anything: the service stays static
    assert manager.systemctl("is-enabled", "hecate.service", check=False).stdout.strip() == "static"

    ctl_env = system_env(home)
    run(["/usr/bin/hecatectl", "register", "ctl-plugin", "--version", "2.0"], env=ctl_env)
    listed = json.loads(run(["/usr/bin/hecatectl", "--json", "list"], env=ctl_env).stdout)
    assert {p["name"]: p["version"] for p in listed} == {"curl-plugin": "", "ctl-plugin": "2.0"}
    code, plugins = curl(sock, "GET", "/api/plugins")
    assert code == 200 and len(plugins) == 2

    root = home / ".hecate"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in ("hecate-daemon", "curl-plugin", "ctl-plugin"):
        check_namespace(root, name)
    assert (root / "ctl-plugin" / "plugin.toml").is_file()
    assert (root / "hecate-daemon" / "run" / "daemon.pid").read_text().strip() == str(pid)


@pytest.mark.slow
@needs_root_debian
def test_purge_removes_the_package(installed: Path) -> None:
    purge("hecated")
    assert not is_installed("hecated")
    assert not Path("/usr/bin/hecated").exists()
    assert not Path("/usr/bin/hecatectl").exists()
    assert not (USER_UNITS / "hecate.socket").exists()
    assert not (USER_UNITS / "hecate.service").exists()
    assert run(["dpkg", "-s", "hecated"], env=apt_env(), check=False).returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/rpmbuild").exists(), reason="needs rpmbuild (apt: rpm)")
def test_rpm_builds_with_debian_rpmbuild() -> None:
    out = short_tempdir("hrpm")
    try:
        run([str(PACKAGING / "rpm" / "build.sh"), "--out", str(out)], timeout=900)
        rpms = sorted(out.glob(f"hecated-{VERSION}-*.noarch.rpm"))
        assert len(rpms) == 1, list(out.iterdir())
        rpm = str(rpms[0])
        files = run(["rpm", "-qpl", rpm]).stdout.split()
        for path in (
            "/usr/bin/hecated",
            "/usr/bin/hecatectl",
            "/usr/lib/systemd/user/hecate.socket",
            "/usr/lib/systemd/user/hecate.service",
        ):
            assert path in files, path
        assert any(f.endswith("/hecated/core/index.py") for f in files)
        links = run(["rpm", "-qp", "--qf", "[%{FILENAMES} -> %{FILELINKTOS}\n]", rpm]).stdout
        alias = "/usr/lib/systemd/user/hecate-daemon.service -> hecate.service"
        assert alias in links.splitlines(), links
        requires = run(["rpm", "-qpR", rpm]).stdout
        for dep in ("python3-werkzeug >= 2.2", "python3-watchdog", "python3-systemd"):
            assert dep in requires, requires
        scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
        # presets decide at install (default: off); nothing is started
        assert "preset --global hecate.socket" in scripts
        assert "start" not in scripts
        assert run(["rpm", "-qp", "--qf", "%{VERSION}", rpm]).stdout == VERSION
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/makepkg").exists(), reason="apt: pacman-package-manager")
def test_pkgbuild_runs_through_debian_makepkg() -> None:
    out = short_tempdir("harch")
    try:
        run([str(PACKAGING / "arch" / "build.sh"), "--out", str(out)], timeout=900)
        (pkg,) = out.glob(f"hecated-{VERSION}-1-any.pkg.tar.*")
        files = run(["bsdtar", "-tf", str(pkg)]).stdout.split()
        for path in (
            "usr/bin/hecated",
            "usr/bin/hecatectl",
            "usr/lib/systemd/user/hecate.socket",
            "usr/lib/systemd/user/hecate.service",
            "usr/share/man/man1/hecated.1.gz",
        ):
            assert path in files, path
        assert not any("etc/systemd" in f for f in files)  # nothing enabled
        listing = run(["bsdtar", "-tvf", str(pkg)]).stdout
        alias = "usr/lib/systemd/user/hecate-daemon.service -> hecate.service"
        assert re.search(rf"^l.* {re.escape(alias)}$", listing, re.M), listing
        info = run(["bsdtar", "-xOf", str(pkg), ".PKGINFO"]).stdout
        assert f"pkgver = {VERSION}-1" in info
        for dep in ("python-werkzeug", "python-watchdog", "python-systemd", "python-tomli-w"):
            assert f"depend = {dep}\n" in info, info
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)


# -- the wheel: pip install + `hecated install-units` -----------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/lib/systemd/systemd").exists(),
    reason="needs root (for /run/systemd/system) and systemd (apt: systemd)",
)
def test_wheel_in_fresh_venv_with_install_units(manager: UserManager) -> None:
    work = manager.base / "wheel"  # not under /tmp: the service has PrivateTmp=yes
    work.mkdir()
    try:
        # from a clean copy, so that no build/ or egg-info is left in the checkout
        run([str(PACKAGING / "source-tree.sh"), str(work / "src")])
        build = ["/usr/bin/python3", "-m", "build", "--wheel", "--no-isolation"]
        build += ["--skip-dependency-check", "--outdir", str(work / "dist"), str(work / "src")]
        run(build, env={"PATH": SYS_PATH, "HOME": str(work)})
        wheel = next((work / "dist").glob(f"hecated-{VERSION}-py3-none-any.whl"))
        venv = work / "venv"
        run(["python3", "-m", "venv", str(venv)], env=dict(os.environ))
        run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], env=dict(os.environ))

        unit_dir = manager.home / ".config" / "systemd" / "user"
        run([str(venv / "bin" / "hecated"), "install-units", "--dir", str(unit_dir)])
        service = unit(unit_dir / "hecate.service")
        assert service["Service"]["ExecStart"].split()[0] == str(venv / "bin" / "hecated")

        manager.systemctl("daemon-reload")
        fragment = manager.systemctl("show", "-P", "FragmentPath", "hecate.socket").stdout
        assert fragment.strip() == str(unit_dir / "hecate.socket")
        manager.systemctl("start", "hecate.socket")
        sock = manager.home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
        code, body = curl(sock, "POST", "/api/plugins/register", {"name": "wheel-plugin"})
        assert code == 201, (body, manager.service_log())
        pid = main_pid(manager, "hecate.service")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(venv / "bin" / "hecated").encode() in cmdline, cmdline
        run(
            [str(venv / "bin" / "hecatectl"), "register", "ctl-plugin"],
            env=system_env(manager.home),
        )
        for name in ("hecate-daemon", "wheel-plugin", "ctl-plugin"):
            check_namespace(manager.home / ".hecate", name)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
