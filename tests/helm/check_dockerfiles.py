#!/usr/bin/python3
"""Static checks of deploy/Dockerfile.cpu and deploy/Dockerfile.cuda (no Docker engine runs here).

Each must: build in a first stage (debian:12 / an nvidia/cuda devel image) with
scripts/setup-deps.sh and `make build`; copy only the switchyard binaries into a second, smaller
stage (debian:12-slim / an nvidia/cuda runtime image); run as a numeric non-root USER; EXPOSE the
chart's ports. The CPU image must install a runtime package for every library that
scripts/setup-deps.sh installs a -dev package of, so a new dependency cannot be forgotten there.
Exit status 0 when all hold, 1 otherwise.
"""

import os
import re
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PORTS = {"50051", "50052", "8000", "50061", "8001"}
# -dev package in setup-deps.sh -> runtime packages the CPU image must install (Debian 12 names).
RUNTIME_OF = {
    "libgrpc++-dev": ["libgrpc++1.51", "libgrpc29"],
    "libprotobuf-dev": ["libprotobuf32"],
    "libabsl-dev": ["libabsl20220623"],
    "prometheus-cpp-dev": ["libprometheus-cpp-core1.0", "libprometheus-cpp-pull1.0"],
    "libgloo-dev": ["libgloo0"],
    "libopenblas-dev": ["libopenblas0-pthread"],
    "libspdlog-dev": ["libspdlog1.10", "libfmt9"],
    "libpcre2-dev": ["libpcre2-8-0"],
    "libutf8proc-dev": ["libutf8proc2"],
    "libxxhash-dev": ["libxxhash0"],
}
# Build-only: headers, test and benchmark frameworks, code generators.
BUILD_ONLY = {"libgtest-dev", "libgmock-dev", "libbenchmark-dev", "nlohmann-json3-dev"}


def stages(text):
    """[(base image, [instructions])] per FROM, line continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            out.append((rest.split()[0], []))
        elif out:
            out[-1][1].append((word.upper(), rest))
    return out


def check(name, build_base, runtime_base):
    problems = []
    path = os.path.join(REPO, "deploy", name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    st = stages(text)
    if len(st) != 2:
        return [f"{name}: expected 2 stages (build, runtime), found {len(st)}"]
    (b_base, b_ins), (r_base, r_ins) = st
    if not re.fullmatch(build_base, b_base):
        problems.append(f"{name}: build stage FROM {b_base}, want {build_base}")
    if not re.fullmatch(runtime_base, r_base):
        problems.append(f"{name}: runtime stage FROM {r_base}, want {runtime_base}")
    runs = " ".join(rest for word, rest in b_ins if word == "RUN")
    for needle in ("scripts/setup-deps.sh", "make build"):
        if needle not in runs:
            problems.append(f"{name}: the build stage does not run {needle}")
    copies = [rest for word, rest in r_ins if word == "COPY"]
    if not any("--from=build" in c and "/out/bin/" in c for c in copies):
        problems.append(f"{name}: the runtime stage does not copy the binaries from the build stage")
    if any("--from" not in c for c in copies):
        problems.append(f"{name}: the runtime stage copies from the build context")
    users = [rest.strip() for word, rest in r_ins if word == "USER"]
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]):
        problems.append(f"{name}: the runtime stage must end as a numeric non-root USER, has {users}")
    exposed = set(" ".join(rest for word, rest in r_ins if word == "EXPOSE").split())
    if exposed != PORTS:
        problems.append(f"{name}: EXPOSE {sorted(exposed)}, want {sorted(PORTS)}")
    if not os.path.exists(path + ".dockerignore"):
        problems.append(f"{name}: no {name}.dockerignore (the build context would hold build dirs)")
    return problems


def check_cpu_runtime_packages():
    with open(os.path.join(REPO, "scripts", "setup-deps.sh"), encoding="utf-8") as f:
        m = re.search(r"packages=\((.*?)\)", f.read(), re.S)
    dev = {p for p in m.group(1).split() if p.endswith("-dev")}
    with open(os.path.join(REPO, "deploy", "Dockerfile.cpu"), encoding="utf-8") as f:
        runtime_stage = f.read().split("FROM debian:12-slim", 1)[-1]
    problems = []
    for pkg in sorted(dev - BUILD_ONLY):
        if pkg not in RUNTIME_OF:
            problems.append(f"setup-deps.sh installs {pkg}: add its runtime package to "
                            f"deploy/Dockerfile.cpu and to RUNTIME_OF in {os.path.basename(__file__)}")
            continue
        for runtime in RUNTIME_OF[pkg]:
            if not re.search(rf"(?<![\w.+-]){re.escape(runtime)}(?![\w.+-])", runtime_stage):
                problems.append(f"deploy/Dockerfile.cpu: runtime package {runtime} (for {pkg}) missing")
    return problems


def main():
    problems = check("Dockerfile.cpu", r"debian:12", r"debian:12-slim")
    problems += check("Dockerfile.cuda", r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{UBUNTU\}",
                      r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\$\{UBUNTU\}")
    problems += check_cpu_runtime_packages()
    for p in problems:
        print(f"FAIL {p}")
    print(f"check_dockerfiles: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
