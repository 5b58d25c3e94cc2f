"""The build switches (convmixer_fast/_settings.py) and the compiled extension."""

import os
import subprocess
import sys
import sysconfig
import tarfile

import pytest

import convmixer_fast
from convmixer_fast import _settings
from convmixer_fast import _extension
from convmixer_fast._extension import ExtensionStatus, extension_status, status_from_build_info


def test_cuda_build_status(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    monkeypatch.delenv(_settings.ENV_NO_CUDA, raising=False)
    monkeypatch.delenv(_settings.ENV_CUDA_ARCHS, raising=False)
    assert _settings.cuda_build_status(None, str(tmp_path)) == (False, "off: torch is a CPU build")
    assert _settings.cuda_build_status("13.0", None)[0] is False
    assert _settings.cuda_build_status("13.0", str(tmp_path)) == (
        False, f"off: the CUDA toolkit at {tmp_path} has no include/cuda_runtime.h; set CUDA_HOME")
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    assert _settings.cuda_build_status("13.0", str(tmp_path)) == (True, "CUDA 13.0, sm_80, sm_90a")
    monkeypatch.setenv(_settings.ENV_NO_CUDA, "1")
    assert _settings.cuda_build_status("13.0", str(tmp_path)) == (False, "off: CONVMIXER_FAST_NO_CUDA is set")


def test_toolkit_of_a_wrapped_nvcc(tmp_path, monkeypatch):
    """A wrapper script on PATH (the toolkit elsewhere): the toolkit is the one nvcc runs from."""
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    real_nvcc = toolkit / "bin" / "nvcc"  # what nvcc -dryrun prints first, as nvcc 13.0 does
    real_nvcc.write_text(f'#!/bin/sh\necho "#$ _NVVM_BRANCH_=nvvm" >&2\necho "#$ _HERE_={toolkit}/bin" >&2\n')
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {real_nvcc} "$@"\n')
    for script in (real_nvcc, wrapper):
        script.chmod(0o755)
    assert _settings.nvcc_toolkit_home(str(wrapper)) == str(toolkit)
    assert _settings.nvcc_toolkit_home(str(tmp_path / "missing")) is None
    assert _settings.nvcc_toolkit_home(None) is None
    # What the build, inspect and the tests use: CUDA_HOME first, else the wrapper's toolkit.
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "elsewhere"))
    assert _settings.cuda_toolkit_home() == str(tmp_path / "elsewhere")
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    assert _settings.cuda_toolkit_home() == str(toolkit)
    assert _settings.cuda_tool("nvcc") == str(real_nvcc)


def test_cuda_archs_switch(monkeypatch):
    monkeypatch.setenv(_settings.ENV_CUDA_ARCHS, "90a")
    assert _settings.gencode_flags() == ["-gencode=arch=compute_90a,code=sm_90a"]
    monkeypatch.setenv(_settings.ENV_CUDA_ARCHS, " 80 ; 90a ;")
    assert _settings.cuda_archs() == ["80", "90a"]
    for value in ("sm90", "9", "90aa", "\u0669\u0660"):  # (the last: Arabic-Indic digits, which isdigit takes)
        monkeypatch.setenv(_settings.ENV_CUDA_ARCHS, f"80;{value}")
        with pytest.raises(ValueError, match=f"expected entries like 80 or 90a, got '{value}'"):
            _settings.cuda_archs()
    for value in ("", ";"):  # no architecture: torch's build would pick its own (plain sm_90, say)
        monkeypatch.setenv(_settings.ENV_CUDA_ARCHS, value)
        with pytest.raises(ValueError, match="expected ';'-separated entries like 80;90a"):
            _settings.cuda_archs()


@pytest.mark.parametrize("name, default", [
    (_settings.ENV_AUTO_MEASURE, True), (_settings.ENV_TRITON_AUTOTUNE, True), (_settings.ENV_NO_CUDA, False),
])
def test_on_off_switches_take_the_documented_spellings_and_refuse_others(monkeypatch, name, default):
    read = {_settings.ENV_AUTO_MEASURE: _settings.auto_measures, _settings.ENV_TRITON_AUTOTUNE: _settings.triton_autotunes,
            _settings.ENV_NO_CUDA: lambda: _settings.cuda_build_status("13.0", None)[1].endswith("is set")}[name]
    monkeypatch.delenv(name, raising=False)
    assert read() is default
    for value, on in [("", default), (" ", default), ("0", False), ("off", False), ("No", False), ("FALSE", False),
                      ("1", True), ("on", True), ("Yes", True), (" true ", True)]:
        monkeypatch.setenv(name, value)
        assert read() is on, value
    for value in ("maybe", "2", "false-"):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=f"{name}: expected 0 or 1 .*got '{value}'"):
            read()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(_settings.ENV_CACHE_DIR, str(tmp_path))
    assert _settings.cache_dir("auto") == os.path.join(str(tmp_path), "auto")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(_settings.ENV_CACHE_DIR, "~/cache")  # as a Dockerfile's ENV sets it: no shell expanded ~
    assert _settings.cache_dir("auto") == os.path.join(str(tmp_path), "home", "cache", "auto")
    monkeypatch.delenv(_settings.ENV_CACHE_DIR)
    assert _settings.cache_dir() == os.path.join(str(tmp_path), "home", ".cache", "convmixer_fast")
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no HOME, no passwd entry (docker run -u)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    assert _settings.cache_dir("auto") == os.path.join(str(tmp_path), "tmp", f"convmixer_fast-{os.getuid()}", "auto")
    monkeypatch.undo()
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.delenv(_settings.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("HOME", "")  # (an env file's HOME=): not /.cache, which a user cannot write
    assert _settings.cache_dir("auto") == os.path.join(str(tmp_path), "tmp", f"convmixer_fast-{os.getuid()}", "auto")


@pytest.mark.parametrize("arch, runs_on, not_on", [
    ("80", [(8, 0), (8, 6), (8, 9)], [(7, 5), (9, 0), (10, 0), (12, 0)]),
    ("86", [(8, 6), (8, 9)], [(8, 0), (9, 0)]),
    ("90a", [(9, 0)], [(8, 0), (9, 1), (10, 0)]),
])
def test_which_gpus_machine_code_runs_on(arch, runs_on, not_on):
    assert all(_settings.arch_runs_on(arch, *capability) for capability in runs_on)
    assert not any(_settings.arch_runs_on(arch, *capability) for capability in not_on)


def write_sources(root, files: dict) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_sources_digest_follows_what_c_is_compiled_from(tmp_path, monkeypatch):
    """Every C++ / CUDA file of csrc/ by path and content, setup.py, and the compile flags; nothing
    else."""
    assert _settings.sources_digest(str(tmp_path)) is None  # no csrc/: an installed package
    write_sources(tmp_path, {"csrc/ext.cpp": "int a;", "csrc/kernels/k.cu": "int b;", "csrc/kernels/k.cuh": ""})
    digest = _settings.sources_digest(str(tmp_path))
    assert len(digest) == 16
    write_sources(tmp_path, {"csrc/notes.txt": "x", "csrc/kernels/k.cu.orig": "x", "README.md": "x"})
    assert _settings.sources_digest(str(tmp_path)) == digest
    edits = ({"csrc/kernels/k.cu": "int c;"}, {"csrc/kernels/k.cuh": " "}, {"csrc/kernels/new.h": ""}, {"setup.py": ""})
    for edit in edits:
        write_sources(tmp_path, edit)
        assert _settings.sources_digest(str(tmp_path)) != digest
        for name in edit:
            (tmp_path / name).unlink()
        write_sources(tmp_path, {"csrc/kernels/k.cu": "int b;", "csrc/kernels/k.cuh": ""})
        assert _settings.sources_digest(str(tmp_path)) == digest
    (tmp_path / "csrc/kernels/k.cu").rename(tmp_path / "csrc/kernels/j.cu")
    assert _settings.sources_digest(str(tmp_path)) != digest
    (tmp_path / "csrc/kernels/j.cu").rename(tmp_path / "csrc/kernels/k.cu")
    monkeypatch.setattr(_settings, "NVCC_FLAGS", [*_settings.NVCC_FLAGS, "-G"])
    assert _settings.sources_digest(str(tmp_path)) != digest


def test_build_info_tells_a_stale_extension(tmp_path):
    """``_C`` reports the digest of its sources and its torch; held to the checkout's and the
    running torch's, a mismatch of either is stale, and a missing side cannot be compared."""
    write_sources(tmp_path, {"csrc/ext.cpp": "int a;"})
    digest = _settings.sources_digest(str(tmp_path))

    def status(sources=digest, torch_built="2.11.0+cu130", root=tmp_path, torch_running="2.11.0+cu130"):
        info = f"cuda=1;archs=80,90a;sources={sources};torch={torch_built};status=CUDA 13.0, sm_80, sm_90a"
        return status_from_build_info(info, str(root), torch_running)

    current = status()
    assert current == ExtensionStatus(True, True, "CUDA 13.0, sm_80, sm_90a", ("80", "90a"), True, None)
    edited = status(sources="0123456789abcdef")
    assert not edited.current and "other sources than" in edited.stale and str(tmp_path) in edited.stale
    other_torch = status(torch_running="2.12.0+cu130")
    assert not other_torch.current
    assert other_torch.stale == "was built against torch 2.11.0+cu130, not the torch 2.12.0+cu130 running"
    installed = status(root=tmp_path / "site-packages")  # no csrc/ beside the package
    assert not installed.current and installed.stale is None
    from_before = status_from_build_info("cuda=0;archs=;status=off: torch is a CPU build", str(tmp_path), "2.13.0")
    assert from_before == ExtensionStatus(True, False, "off: torch is a CPU build", (), False, None)
    # A CUDA torch without a toolkit builds _C without its kernels, and the reason holds a ";".
    no_toolkit = "off: no CUDA toolkit (nvcc) found; set CUDA_HOME"
    info = f"cuda=0;archs=;sources={digest};torch=2.11.0+cu130;status={no_toolkit}"
    assert status_from_build_info(info, str(tmp_path), "2.11.0+cu130") == ExtensionStatus(
        True, False, no_toolkit, (), True, None)


def test_a_stale_extension_warns_how_to_rebuild(tmp_path, monkeypatch):
    if not extension_status().loaded:
        pytest.skip(f"_C is not built here: {extension_status().detail}")
    write_sources(tmp_path, {"csrc/ext.cpp": "int edited;"})
    monkeypatch.setattr(_extension, "CHECKOUT_ROOT", str(tmp_path))
    rebuild = r"other sources than .* rebuild it with pip install --no-build-isolation -e \."
    with pytest.warns(UserWarning, match=rebuild):
        status = _extension.extension_status.__wrapped__()
    assert status.loaded and not status.current


@pytest.mark.parametrize("stand_in", ["None", "types.ModuleType('convmixer_fast._C')"],
                         ids=["absent", "without-the-ops"])
def test_an_extension_that_cannot_load_is_reported_with_the_reinstall_command(stand_in):
    """No ``_C`` (not built; built for another Python: ImportError), or one built from older sources
    without an op ``_cuda_fakes`` registers a fake for (RuntimeError): unloaded, saying why and how to
    reinstall, not raised (in a fresh process: this one has loaded its ``_C``)."""
    script = (f"import sys, types; sys.modules['convmixer_fast._C'] = {stand_in}\n"
              "from convmixer_fast._extension import extension_status\n"
              "status = extension_status(); print(status.loaded, status.with_cuda); print(status.detail)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(convmixer_fast.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded, detail = done.stdout.splitlines()
    assert loaded == "False False"
    assert detail.startswith("convmixer_fast._C is not built or failed to load (")
    assert detail.endswith("); reinstall with: pip install --no-build-isolation .")


def test_the_sdist_carries_every_source_of_the_extension(tmp_path):
    """A wheel built from the sdist (``python -m build``) compiles ``_C`` from what the sdist
    carries: every file ``sources_digest`` reads (MANIFEST.in; setuptools itself adds the listed
    Extension sources only, and no .cu files under a CPU torch or CONVMIXER_FAST_NO_CUDA)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(convmixer_fast.__file__)))
    if not os.path.isdir(os.path.join(root, "csrc")):
        pytest.skip(f"no source tree beside the package ({root})")
    env = {**os.environ, _settings.ENV_NO_CUDA: "1"}  # (no CUTLASS needed)
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                    str(tmp_path)], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    [archive] = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        carried = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    sources = {os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
               for folder, _, names in os.walk(os.path.join(root, "csrc"))
               for name in names if name.endswith(_settings.SOURCE_SUFFIXES)}
    assert len(sources) > 10 and sources | {"setup.py", "CMakeLists.txt"} <= carried


def test_built_package_loads_its_extension():
    """Installed (pip install .) or built in place (pip install -e .): _C must load."""
    status = extension_status()
    package_dir = os.path.dirname(os.path.abspath(convmixer_fast.__file__))
    built_in_place = os.path.exists(os.path.join(package_dir, "_C" + sysconfig.get_config_var("EXT_SUFFIX")))
    if not (built_in_place or "site-packages" in package_dir):
        pytest.skip(f"running from an unbuilt source tree ({package_dir}): {status.detail}")
    assert status.loaded, status.detail
    if built_in_place:  # the tests run the kernels csrc/ holds now (rebuild after editing it)
        assert status.current, status.stale
    import torch

    if torch.version.cuda is None:
        assert not status.with_cuda and status.detail == "off: torch is a CPU build" and status.cuda_archs == ()


def test_three_digit_architectures(monkeypatch):
    """Blackwell's archs have three digits: "100a" is compute capability 10.0 (and only it), "120"
    runs on 12.x; none of them is 1.0 or 1.2."""
    monkeypatch.setenv(_settings.ENV_CUDA_ARCHS, "80;100a;120")
    assert _settings.cuda_archs() == ["80", "100a", "120"]
    assert _settings.arch_runs_on("100a", 10, 0) and not _settings.arch_runs_on("100a", 10, 3)
    assert not any(_settings.arch_runs_on("100a", *capability) for capability in [(1, 0), (9, 0), (12, 0)])
    assert _settings.arch_runs_on("120", 12, 0) and _settings.arch_runs_on("120", 12, 1)
    assert not any(_settings.arch_runs_on("120", *capability) for capability in [(1, 2), (10, 0)])


def test_a_blank_cache_dir_is_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in ("", "  "):
        monkeypatch.setenv(_settings.ENV_CACHE_DIR, value)
        assert _settings.cache_dir("auto") == os.path.join(str(tmp_path), "home", ".cache", "convmixer_fast", "auto")


def test_cuda_home_comes_before_cuda_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "path"))
    assert _settings.cuda_toolkit_home() == str(tmp_path / "home")
    monkeypatch.delenv("CUDA_HOME")
    assert _settings.cuda_toolkit_home() == str(tmp_path / "path")


def test_a_blank_source_commit_is_none(monkeypatch):
    """(As ``CONVMIXER_FAST_SOURCE_COMMIT=$(git rev-parse HEAD 2>/dev/null)`` sets it outside git.)"""
    for value, commit in [("", None), (" ", None), (" 06f855f0\n", "06f855f0")]:
        monkeypatch.setenv(_settings.ENV_SOURCE_COMMIT, value)
        assert _settings.source_commit() == commit
    monkeypatch.delenv(_settings.ENV_SOURCE_COMMIT)
    assert _settings.source_commit() is None
