"""The reconciler's file half and its Quadlet check, on real files, without a user manager.

What one look at the gitops tree and the unit directories plans (adapters/gitopslinks),
that a link is only ever made where nothing is or replaced where an own link is, what
"no Quadlet" says (adapters/gitopsquadlet), and the burst's hand-over (gitopswatch).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hecated.adapters import gitopsquadlet
from hecated.adapters.gitops import Reconciler
from hecated.adapters.gitopslinks import (
    UnitDirs,
    clean_tmp,
    is_own,
    look,
    make_link,
    remove_link,
    replace_link,
)
from hecated.adapters.gitopsowed import STOPS, load_owed
from hecated.adapters.gitopswatch import Burst
from hecated.adapters.unitcontrol import UserManager
from hecated.core.index import Index
from hecated.core.layout import Layout


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Layout, UnitDirs]:
    layout = Layout.at(tmp_path / ".hecate")
    for sub in ("system", "apps"):
        (layout.gitops_dir / sub).mkdir(parents=True)
    dirs = UnitDirs.of(tmp_path / ".config")
    for folder in dirs.all():
        folder.mkdir(parents=True)
    return layout, dirs


def test_one_look_sorts_every_file_and_link(tree: tuple[Layout, UnitDirs]) -> None:
    layout, dirs = tree
    apps, system = layout.gitops_dir / "apps", layout.gitops_dir / "system"
    for name in ("hecate-a.service", "hecate-b.container", "hecate-c.service", "x.env"):
        (apps / name).write_text("[Service]\n")
    (system / "hecate-b.container").write_text("[Service]\n")
    (system / "hecate-daemon.container").write_text("[Service]\n")  # the primary's own
    (apps / "tmpl@.service").write_text("[Service]\n")
    os.symlink("/etc/hostname", apps / "hecate-d.service")  # a link in the tree: never followed
    (apps / "hecate-e.service").write_text("[Service]\n")
    os.symlink(apps / "hecate-a.service", dirs.systemd / "hecate-a.service")  # in place
    os.symlink(system / "hecate-b.container", dirs.quadlet / "hecate-b.container")  # to replace
    (dirs.systemd / "hecate-e.service").write_text("the user's own\n")  # in the way
    os.symlink(apps / "hecate-g.service", dirs.systemd / "hecate-g.service")  # dangling, own
    os.symlink("/nowhere/hecate-h.service", dirs.systemd / "hecate-h.service")  # not own

    plan = look(layout, dirs)
    assert sorted(plan.wants) == ["hecate-a", "hecate-b", "hecate-c", "hecate-e"]
    assert plan.wants["hecate-b"].src == str(apps / "hecate-b.container")  # apps/ wins
    assert [w.desired.name for w in plan.make] == ["hecate-c"]
    assert [w.desired.name for w in plan.replace] == ["hecate-b"]
    assert sorted(plan.blocked) == ["hecate-e"]
    assert plan.dangling == [dirs.systemd / "hecate-g.service"]
    assert sorted(plan.not_regular) == ["hecate-d"]
    assert sorted(Path(p).name for p in plan.refused) == [
        "hecate-daemon.container",
        "tmpl@.service",
    ]


def test_links_are_made_only_where_nothing_is_and_replaced_only_where_ours_is(
    tree: tuple[Layout, UnitDirs],
) -> None:
    layout, dirs = tree
    (layout.gitops_dir / "apps" / "hecate-a.service").write_text("[Service]\n")
    plan = look(layout, dirs)
    (want,) = plan.make
    want.dest.write_text("appeared meanwhile\n")  # a person's file, between look and link
    assert make_link(want, layout.gitops_dir) is False
    assert want.dest.read_text() == "appeared meanwhile\n"
    assert replace_link(want, layout.gitops_dir) is False  # not ours: not replaced either
    assert want.dest.read_text() == "appeared meanwhile\n"
    assert not [p for p in dirs.systemd.iterdir() if p.name.endswith(".hecated-tmp")]
    want.dest.unlink()
    assert make_link(want, layout.gitops_dir) is True
    assert os.readlink(want.dest) == want.src
    assert make_link(want, layout.gitops_dir) is True  # the same link made by another


def test_only_a_dangling_own_link_is_removed(tree: tuple[Layout, UnitDirs]) -> None:
    layout, dirs = tree
    apps = layout.gitops_dir / "apps"
    own = dirs.systemd / "hecate-g.service"
    os.symlink(apps / "hecate-g.service", own)
    foreign = dirs.systemd / "hecate-h.service"
    os.symlink("/nowhere/hecate-h.service", foreign)
    regular = dirs.systemd / "hecate-i.service"
    regular.write_text("x\n")
    assert remove_link(foreign, layout.gitops_dir) is False and os.path.lexists(foreign)
    assert remove_link(regular, layout.gitops_dir) is False and regular.exists()
    (apps / "hecate-g.service").write_text("back\n")  # its file came back: not dangling
    assert remove_link(own, layout.gitops_dir) is False and os.path.lexists(own)
    (apps / "hecate-g.service").unlink()
    assert remove_link(own, layout.gitops_dir) is True and not os.path.lexists(own)


def test_a_symlinked_apps_is_not_followed_out_of_the_tree(
    tree: tuple[Layout, UnitDirs], tmp_path: Path
) -> None:
    layout, dirs = tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "hecate-evil.service").write_text("[Service]\nExecStart=/bin/true\n")
    apps = layout.gitops_dir / "apps"
    apps.rmdir()
    apps.symlink_to(elsewhere)
    own = dirs.systemd / "hecate-evil.service"  # linked before apps/ became a symlink
    os.symlink(apps / "hecate-evil.service", own)
    plan = look(layout, dirs)
    assert plan.wants == {} and plan.make == [] and plan.not_regular == {}
    assert list(plan.unsafe) == [str(apps)], plan.unsafe
    assert plan.dangling == [own]  # its file is not a regular file of the tree
    assert remove_link(own, layout.gitops_dir) is True


def test_a_tmp_name_is_cleaned_only_when_it_is_an_own_link(tree: tuple[Layout, UnitDirs]) -> None:
    layout, dirs = tree
    apps, system = layout.gitops_dir / "apps", layout.gitops_dir / "system"
    (apps / "hecate-b.service").write_text("[Service]\n")
    os.symlink(system / "hecate-b.service", dirs.systemd / "hecate-b.service")  # to replace
    tmp = dirs.systemd / "hecate-b.service.hecated-tmp"
    tmp.write_text("a person's file under our tmp name\n")
    (want,) = look(layout, dirs).replace
    assert replace_link(want, layout.gitops_dir) is False
    assert tmp.read_text() == "a person's file under our tmp name\n"
    tmp.unlink()
    stale = dirs.quadlet / "hecate-c.container.hecated-tmp"  # a crashed pass's own link
    os.symlink(apps / "hecate-c.container", stale)
    foreign = dirs.quadlet / "hecate-d.container.hecated-tmp"
    os.symlink("/elsewhere/hecate-d.container", foreign)
    plan = look(layout, dirs)
    assert plan.stale_tmp == [stale]
    assert clean_tmp(stale, layout.gitops_dir) is True and not os.path.lexists(stale)
    assert clean_tmp(foreign, layout.gitops_dir) is False and os.path.lexists(foreign)
    assert replace_link(plan.replace[0], layout.gitops_dir) is True
    assert os.readlink(want.dest) == want.src and not os.path.lexists(tmp)


@pytest.mark.parametrize(
    ("target", "own"),
    [
        ("/g/apps/x.service", True),
        ("/g/x.service", True),
        ("/g/../etc/x.service", False),
        ("apps/x.service", False),  # relative: never ours
        ("/gitops-not/x.service", False),
        ("/g", False),
    ],
)
def test_a_link_is_own_when_its_text_points_into_the_tree(target: str, own: bool) -> None:
    assert is_own(target, Path("/g")) is own


# -- Quadlet ------------------------------------------------------------------------------


def podman(folder: Path, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "podman").write_text(f"#!/bin/sh\necho 'podman version {version}'\n")
    (folder / "podman").chmod(0o755)


def test_quadlet_is_there_when_its_generator_is(tmp_path: Path) -> None:
    gen = tmp_path / "gen" / gitopsquadlet.GENERATOR
    gen.parent.mkdir()
    gen.write_text("#!/bin/sh\n")
    gen.chmod(0o755)
    assert gitopsquadlet.quadlet_problem([str(gen.parent)]) is None


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("4.3.1", "needs podman 4.4 or later for Quadlet; this machine has 4.3.1"),
        ("3.0", "needs podman 4.4 or later for Quadlet; this machine has 3.0"),
        ("5.2.0", "needs Quadlet's generator (podman-user-generator); podman 5.2.0 is installed"),
    ],
)
def test_without_the_generator_it_says_which_podman(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, says: str
) -> None:
    podman(tmp_path / "bin", version)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert gitopsquadlet.quadlet_problem([str(tmp_path / "none")]).startswith(says)


def test_without_podman_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gitopsquadlet.quadlet_problem([str(tmp_path)]) == (
        "needs podman 4.4 or later for Quadlet; podman is not installed"
    )


def test_the_generator_is_looked_for_where_the_manager_looks() -> None:
    env = {"SYSTEMD_GENERATOR_PATH": "/a:/b"}
    assert gitopsquadlet.generator_dirs(env) == ("/a", "/b")
    env = {"SYSTEMD_GENERATOR_PATH": "/a:"}
    assert gitopsquadlet.generator_dirs(env) == ("/a", *gitopsquadlet.GENERATOR_DIRS)
    assert gitopsquadlet.generator_dirs({}) == gitopsquadlet.GENERATOR_DIRS


# -- bursts -------------------------------------------------------------------------------


def test_a_burst_hands_over_every_path_once_and_is_pending_until_done() -> None:
    burst = Burst(quiet=0.01, longest=1.0)
    assert not burst.pending
    for name in ("a", "b", "a"):
        burst.touch(name)
    assert burst.pending
    assert burst.take() == {"a", "b"}
    assert burst.pending  # the pass runs
    burst.done()
    assert not burst.pending
    burst.now()
    assert burst.take() == set()  # a pass wanted at once: nothing heard
    burst.done()


def test_a_closed_burst_releases_its_taker() -> None:
    burst = Burst()
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(burst.take()))
    taker.start()
    burst.close()
    taker.join(10)
    assert got == [None]


# -- the reconciler without a user manager: what it owes, it keeps ---------------------------


def away_reconciler(layout: Layout, dirs: UnitDirs, tmp_path: Path) -> Reconciler:
    """A reconciler whose manager's bus is a path nobody listens on (a real UserManager):
    every reload, start and stop fails as SystemdUnavailable."""
    layout.ensure_layout()
    nobody = UserManager(address=f"unix:path={tmp_path / 'no-bus'}")
    return Reconciler(Index(layout), nobody, dirs=dirs)


def dangling_link(layout: Layout, dirs: UnitDirs, unit: str) -> tuple[Path, Path]:
    """An own link to ``unit``'s file in apps/, which is gone: (the file, the link)."""
    src = layout.gitops_dir / "apps" / unit
    link = dirs.systemd / unit
    os.symlink(src, link)
    return src, link


def test_a_start_owed_to_an_absent_manager_is_kept_on_disk_and_hecated_may_exit_idle(
    tree: tuple[Layout, UnitDirs], tmp_path: Path
) -> None:
    layout, dirs = tree
    (layout.gitops_dir / "apps" / "hecate-a.service").write_text("[Service]\n")
    r = away_reconciler(layout, dirs, tmp_path)
    p = r.reconcile(set())
    assert [w.desired.name for w in p.new] == ["hecate-a"]
    # No manager at all: staying up would do no more than the next hecated's first pass,
    # which reloads and makes the starts kept on disk.
    assert not r.pending
    assert layout.run_path("gitops-owed-starts").read_text() == "hecate-a.service\n"
    assert not (layout.data_dir / "gitops-owed-starts").exists()  # only SUBDIRS at the top


def test_a_stop_that_fails_keeps_the_link_and_is_owed(
    tree: tuple[Layout, UnitDirs], tmp_path: Path
) -> None:
    layout, dirs = tree
    _, link = dangling_link(layout, dirs, "hecate-g.service")
    r = away_reconciler(layout, dirs, tmp_path)
    p = r.reconcile(set())
    assert p.plan.dangling == [link] and p.removed == []
    assert os.path.lexists(link)  # kept: the unit may run on, and is stopped later
    assert load_owed(layout, STOPS) == {"hecate-g.service"}  # owed, for this one or the next


def test_an_owed_stop_whose_link_went_by_hand_is_still_owed_until_its_file_is_back(
    tree: tuple[Layout, UnitDirs], tmp_path: Path
) -> None:
    layout, dirs = tree
    src, link = dangling_link(layout, dirs, "hecate-h.service")
    r = away_reconciler(layout, dirs, tmp_path)
    r.reconcile(set())
    assert load_owed(layout, STOPS) == {"hecate-h.service"}  # the stop is owed
    link.unlink()  # by hand, the manager still away: the unit would run on with no file
    r.reconcile(set())
    assert load_owed(layout, STOPS) == {"hecate-h.service"}  # still owed
    src.write_text("[Service]\n")  # the file back: the unit is wanted again
    r.reconcile(r.burst.take() or set())  # the pass the watch asks for, as the thread would
    r.burst.done()
    assert not r.pending
    assert not layout.run_path(STOPS).exists()  # nothing owed: no file


def test_a_stop_owed_to_an_absent_manager_is_kept_on_disk_and_hecated_may_exit_idle(
    tree: tuple[Layout, UnitDirs], tmp_path: Path
) -> None:
    layout, dirs = tree
    _, link = dangling_link(layout, dirs, "hecate-k.service")
    r = away_reconciler(layout, dirs, tmp_path)
    r.reconcile(set())
    # No manager at all: staying up for the stop could be forever; the next hecated asks.
    assert not r.pending
    assert layout.run_path(STOPS).read_text() == "hecate-k.service\n"
    link.unlink()  # by hand, before the next hecated: only the file on disk tells
    after = away_reconciler(layout, dirs, tmp_path)  # the next hecated, no manager either
    after.reconcile(set())
    assert not after.pending
    assert load_owed(layout, STOPS) == {"hecate-k.service"}  # asked, still owed, still kept


def test_owed_starts_that_are_no_unit_name_are_dropped_and_said_once(
    tree: tuple[Layout, UnitDirs], caplog: pytest.LogCaptureFixture
) -> None:
    layout, _ = tree
    layout.ensure_layout()
    junk = ["../../etc/x.service", "a.socket", "b@.service", "-.service\\x"]
    layout.run_path("gitops-owed-starts").write_text("\n".join(["hecate-a.service", *junk]))
    assert load_owed(layout) == {"hecate-a.service"}
    said = [r for r in caplog.records if "not a unit name" in r.getMessage()]
    assert len(said) == 1 and "a.socket" in said[0].getMessage()
