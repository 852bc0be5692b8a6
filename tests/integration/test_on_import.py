"""repo_ext.integration.on_import.call_after_import on throw-away modules."""

import sys

from repo_ext.integration.on_import import call_after_import


def test_callback_runs_once_after_the_module_executed(tmp_path, monkeypatch):
    (tmp_path / "watched_mod_a.py").write_text("VALUE = 41\nVALUE += 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    call_after_import("watched_mod_a", lambda module: seen.append(module.VALUE))
    assert seen == []  # not imported yet
    import watched_mod_a  # noqa: F401

    assert seen == [42]  # after the whole module ran, before the import statement returned
    del sys.modules["watched_mod_a"]
    import watched_mod_a  # noqa: F401,F811  (a second import does not call it again)

    assert seen == [42]
    assert not any(type(f).__name__ == "_Watcher" and getattr(f, "name", "") == "watched_mod_a" for f in sys.meta_path)


def test_an_imported_module_gets_the_callback_at_once(tmp_path, monkeypatch):
    (tmp_path / "watched_mod_b.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import watched_mod_b  # noqa: F401

    seen = []
    call_after_import("watched_mod_b", lambda module: seen.append(module.VALUE))
    assert seen == [7]


def test_a_package_submodule_and_the_callback_importing_the_module_again(tmp_path, monkeypatch):
    pkg = tmp_path / "watched_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "inner.py").write_text("REGISTRY = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def register(module):
        from watched_pkg.inner import REGISTRY  # re-entrant import inside the callback, as the trainer does

        REGISTRY["ours"] = module.__name__

    call_after_import("watched_pkg.inner", register)
    from watched_pkg.inner import REGISTRY

    assert REGISTRY == {"ours": "watched_pkg.inner"}
