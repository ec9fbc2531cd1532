"""medplugin.resources: the bundles and overlays are found by an explicit folder, a variable or the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import medplugin
from medplugin import resources
from tests.bundles._runner import REPO

BUNDLES, OVERLAYS = REPO / "bundles", REPO / "configs"


@pytest.fixture
def no_variables(monkeypatch):
    monkeypatch.delenv(resources.BUNDLES_ENV, raising=False)
    monkeypatch.delenv(resources.OVERLAYS_ENV, raising=False)


def test_explicit_folder_wins_over_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.BUNDLES_ENV, str(tmp_path))
    assert resources.bundles_dir(BUNDLES) == BUNDLES
    assert resources.bundles_dir() == tmp_path
    monkeypatch.setenv(resources.OVERLAYS_ENV, str(OVERLAYS))
    assert resources.overlays_dir() == OVERLAYS


def test_a_missing_folder_is_named_with_where_it_came_from(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'x'}: no such folder \\(bundles folder from the folder"):
        resources.bundles_dir(tmp_path / "x")
    monkeypatch.setenv(resources.OVERLAYS_ENV, str(tmp_path / "y"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'y'}: no such folder .*\\$MEDPLUGIN_OVERLAYS"):
        resources.overlays_dir()


def test_bundles_are_listed_and_a_wrong_name_lists_them():
    names = resources.list_bundles(BUNDLES)
    assert "retina_oct_classification" in names and len(names) >= 6
    assert resources.bundle_dir("retina_oct_classification", BUNDLES) == BUNDLES / "retina_oct_classification"
    with pytest.raises(FileNotFoundError, match="retina_oct: no such bundle \\(bundles there: chest_xray_class"):
        resources.bundle_dir("retina_oct", BUNDLES)


def test_overlays_by_name_or_by_path(tmp_path):
    assert resources.overlay_file("smoke", OVERLAYS) == OVERLAYS / "smoke.yaml"
    assert resources.overlay_file("fast.yaml", OVERLAYS) == OVERLAYS / "fast.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("num_epochs: 1\n")
    assert resources.overlay_file(str(own), OVERLAYS) == own
    with pytest.raises(FileNotFoundError, match="no_such.yaml: no such overlay \\(overlays there: demo, .*smoke"):
        resources.overlay_file("no_such", OVERLAYS)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'other.yaml'}: no such overlay file"):
        resources.overlay_file(str(tmp_path / "other.yaml"), OVERLAYS)


def test_without_a_folder_or_variable_the_package_or_its_editable_project_or_a_clear_error(no_variables):
    """A wheel install finds its own copy; an editable install the project pip recorded, if the imported package is
    that project's; otherwise (a checkout on PYTHONPATH) the error says what to pass. The wheel and editable cases
    are run for real in tests/test_install.py."""
    packaged = Path(medplugin.__file__).parent / "_bundles"
    project = resources.editable_project()
    if packaged.is_dir():
        assert resources.bundles_dir() == packaged
    elif project is not None:
        assert (project / "medplugin").resolve() == Path(medplugin.__file__).parent.resolve()
        assert resources.bundles_dir() == project / "bundles"
        assert resources.overlays_dir() == project / "configs"
    else:
        with pytest.raises(FileNotFoundError, match="no bundles shipped with this medplugin .* pass --bundles-dir DIR "
                                                    "or set MEDPLUGIN_BUNDLES"):
            resources.bundles_dir()
        with pytest.raises(FileNotFoundError, match="set MEDPLUGIN_OVERLAYS to the configs/ folder"):
            resources.overlays_dir()


def test_the_editable_project_is_found_from_the_checkouts_root(tmp_path, monkeypatch, no_variables):
    """``python -m medplugin.cli demo ...`` run in the checkout's root: the current folder is first on sys.path and
    holds the ``medplugin.egg-info`` pip's editable build leaves there (no ``direct_url.json``); the editable
    install's project must still be found (it was not: "no bundles shipped with this medplugin")."""
    from importlib import metadata

    recorded = [d for d in metadata.distributions(name="medplugin") if d.read_text("direct_url.json")]
    if not recorded or "editable" not in recorded[0].read_text("direct_url.json"):  # a wheel install (CI: editable)
        pytest.skip("medplugin is not an editable install here")
    project = Path(medplugin.__file__).resolve().parent.parent
    leftover = tmp_path / "medplugin.egg-info"
    leftover.mkdir()
    (leftover / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: medplugin\nVersion: 0.1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert next(iter(metadata.distributions(name="medplugin")))._path == leftover  # found first, as in the checkout
    assert resources.editable_project() == project
    assert resources.bundles_dir() == project / "bundles"
