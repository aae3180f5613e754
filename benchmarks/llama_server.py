"""llama.cpp's own ``llama-server``, built once from the sources llama-cpp-python vendors.

The comparison is only fair if both sides run the same kernels, so the binary is built from
the llama.cpp that the installed llama-cpp-python was compiled from: the ``vendor/llama.cpp``
tree of its source distribution, fetched with pip, configured like llama-cpp-python's own
build (native CPU flags, OpenMP, Release) and with nothing downloaded at build time (no web UI
from the network, no curl). It lands in a cache folder outside the repository, so it is built
once per machine and never committed:

    python benchmarks/llama_server.py            # build (about 10 minutes on 2 cores) and print its path
    python benchmarks/llama_server.py --where    # print the path if it is built, else why not

``bench.py`` calls ``find()`` and leaves the llama-server row out, saying why, when there is
no binary; ``--build-llama-server`` there builds it first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path


def version() -> str:
    import llama_cpp
    return llama_cpp.__version__


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamacpp-openai-course" / f"llama-server-{version()}"


def find() -> tuple[Path | None, str]:
    """The binary and an empty string, or None and why not."""
    binary = cache_dir() / "bin" / "llama-server"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, ""
    return None, (f"llama-server is not built (expected {binary}); build it once with "
                  "`python benchmarks/llama_server.py` (about 10 minutes on 2 cores), "
                  "or pass --build-llama-server to bench.py")


def build(jobs: int = 2, log=print) -> Path:
    """Downloads the sdist with pip, builds ``llama-server`` and installs it into ``cache_dir()``."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        log(f"llama-server: downloading the llama-cpp-python {version()} source distribution")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version()}", "-d", str(root)], check=True)
        sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    src = root / "src"
    if not (src / "CMakeLists.txt").is_file():
        log(f"llama-server: extracting {sdists[-1].name}")
        with tarfile.open(sdists[-1]) as tar:
            prefix = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(src, members=members, filter="data")
    build_dir = root / "build"
    configure = ["cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF",
                 "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF"]
    log("llama-server: " + " ".join(configure))
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    make = ["cmake", "--build", str(build_dir), "--target", "llama-server", f"-j{jobs}"]
    log("llama-server: " + " ".join(make) + " (about 10 minutes on 2 cores)")
    subprocess.run(make, check=True, stdout=subprocess.DEVNULL)
    (root / "bin").mkdir(exist_ok=True)
    binary = root / "bin" / "llama-server"
    shutil.copy2(build_dir / "bin" / "llama-server", binary)
    shutil.rmtree(build_dir)  # ~1 GB of objects; the binary is all we keep
    shutil.rmtree(src)
    return binary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--where", action="store_true", help="only say where the binary is, or why there is none")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    args = p.parse_args(argv)
    binary, why = find()
    if binary is None and not args.where:
        binary, why = build(args.jobs), ""
    print(binary or why)
    return 0 if binary else 1


if __name__ == "__main__":
    sys.exit(main())
