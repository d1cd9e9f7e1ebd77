#!/usr/bin/env python3
"""Checks that docker-compose.yml parses, has the services and health checks the stack needs, sets
no variable that is not a documented setting, and that local settings files stay out of git and
of the image."""
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

# The settings the services read: the configuration table in docs/configuration.md, which is
# generated from the one list in settings/src/catalog.rs (the Rust tests check the table,
# .env.example, and that each service reads only listed settings).
config_doc = (root / "docs" / "configuration.md").read_text()
table = config_doc.split("<!-- settings table:", 1)[1].split("<!-- end of settings table -->", 1)[0]
read = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", table, re.M))
if not read:
    errors.append("docs/configuration.md has no generated settings table")

named = set()
for service in services.values():
    env = service.get("environment") or {}
    named.update(env.keys() if isinstance(env, dict) else (e.split("=")[0] for e in env))
# The servers' own variables (POSTGRES_*, RABBITMQ_*) are not ours.
ours = {v for v in named if not v.startswith(("POSTGRES_", "RABBITMQ_"))}
for var in sorted(ours - read - {"LOG_FORMAT"}):
    errors.append(f"docker-compose.yml sets {var}, which is not a documented setting")

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
print(f"docker-compose.yml parses and sets only documented settings ({len(read)} documented)")
