#!/usr/bin/env python3
"""Checks that docker-compose.yml parses, has the services and health checks the stack needs, and
that every environment variable the code reads is named in .env.example and in the README's
configuration table (and that compose names no variable the code does not read)."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
errors = []

compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose.get("services", {})
for name in ("postgres", "rabbitmq", "ingress", "worker", "api"):
    if name not in services:
        errors.append(f"docker-compose.yml: service {name!r} is missing")
    elif "healthcheck" not in services[name]:
        errors.append(f"docker-compose.yml: service {name!r} has no healthcheck")

# Variables the code reads: settings looked up by name in the crates' src/ (tests excluded).
patterns = [
    re.compile(r'lookup\("([A-Z][A-Z0-9_]+)"\)'),
    re.compile(r'&lookup,\s*"([A-Z][A-Z0-9_]+)"'),
    re.compile(r'\(\s*lookup,\s*"([A-Z][A-Z0-9_]+)"'),
    re.compile(r'env::var\("([A-Z][A-Z0-9_]+)"\)'),
    # The second name of server_limits(&lookup, "…_HEADER_TIMEOUT", "…_MAX_CONNECTIONS").
    re.compile(r'server_limits\(\s*&lookup,\s*"[A-Z][A-Z0-9_]+",\s*"([A-Z][A-Z0-9_]+)"'),
]
ignored = {"CARGO", "CARGO_TARGET_DIR", "RUST_LOG", "TEST_DATABASE_URL", "TEST_AMQP_URL"}
read = set()
for path in root.glob("*/src/**/*.rs"):
    if path.parts[len(root.parts)] in ("testkit", "xtask"):
        continue
    text = path.read_text().split("#[cfg(test)]")[0]
    for pattern in patterns:
        read.update(pattern.findall(text))
read -= ignored

env_example = (root / ".env.example").read_text()
readme = (root / "README.md").read_text()
for var in sorted(read):
    if not re.search(rf"^#?\s*{var}=", env_example, re.M):
        errors.append(f".env.example does not name {var}")
    if f"| `{var}`" not in readme:
        errors.append(f"README.md configuration table does not name {var}")

named = set()
for service in services.values():
    env = service.get("environment") or {}
    named.update(env.keys() if isinstance(env, dict) else (e.split("=")[0] for e in env))
# The servers' own variables (POSTGRES_*, RABBITMQ_*) are not ours.
ours = {v for v in named if not v.startswith(("POSTGRES_", "RABBITMQ_"))}
for var in sorted(ours - read - {"LOG_FORMAT"}):
    errors.append(f"docker-compose.yml sets {var}, which no code reads")

# Local settings files hold secrets (the quick start has users create .env): git must not track
# them and `docker build` (COPY . .) must not copy them into the build stage.
import fnmatch
import subprocess

for name in (".env", ".env.local", ".env.production"):
    ignored_by_git = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-q", "--no-index", name]
    ).returncode == 0
    if not ignored_by_git:
        errors.append(f".gitignore does not ignore {name}")
if subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--no-index", ".env.example"]).returncode == 0:
    errors.append(".gitignore ignores .env.example, the template users copy")


def docker_ignored(name):
    """Whether .dockerignore excludes `name` (last matching pattern wins; `!` re-includes)."""
    verdict = False
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if fnmatch.fnmatch(name, pattern):
            verdict = not negate
    return verdict


for name in (".env", ".env.local", ".env.production"):
    if not docker_ignored(name):
        errors.append(f".dockerignore does not exclude {name} from the build context")
if docker_ignored(".env.example"):
    errors.append(".dockerignore excludes .env.example")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"docker-compose.yml parses; {len(read)} variables the code reads are all documented")
