#!/usr/bin/env bash
# scripts/release.sh VERSION [--no-images]: cuts release VERSION (x.y.z) of
# the workspace. Checks that CHANGELOG.md has a section "## [VERSION] -
# DATE" (move what is under Unreleased there first) and that the tree is
# clean, sets the workspace's version, commits "Release VERSION", tags
# vVERSION, and builds the images (scripts/images.sh), also tagged VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "release: $*" >&2; exit 1; }
version=${1:-}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "give the version as x.y.z (e.g. 0.2.0)"
images=yes
[[ ${2:-} == --no-images ]] && images=no

[[ -z $(git status --porcelain) ]] || die "the tree has changes not committed: commit or stash them first"
git rev-parse -q --verify "refs/tags/v$version" >/dev/null && die "tag v$version exists already"
grep -Eq "^## \[$version\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$" CHANGELOG.md ||
  die "CHANGELOG.md has no section '## [$version] - YYYY-MM-DD': write it (what breaks first, each with its upgrade step)"

# The one version of the workspace ([workspace.package]), and the lock file
# that names it.
awk -v v="$version" '
  /^\[workspace.package\]/ { w = 1 }
  /^\[/ && !/^\[workspace.package\]/ { w = 0 }
  w && /^version = / && !done { print "version = \"" v "\""; done = 1; next }
  { print }' Cargo.toml > Cargo.toml.new && mv Cargo.toml.new Cargo.toml
grep -q "^version = \"$version\"" Cargo.toml || die "could not set the version in Cargo.toml"
cargo metadata --format-version 1 --offline >/dev/null 2>&1 || cargo metadata --format-version 1 >/dev/null 2>&1

git commit -q -am "Release $version"
git tag -a "v$version" -m "Release $version"
echo "release: committed and tagged v$version ($(git rev-parse --short HEAD))"

if [[ $images == yes ]]; then
  bash scripts/images.sh
  for target in claim-service ingest-node; do
    docker tag "claims/$target:offline" "claims/$target:$version"
  done
  echo "release: images claims/claim-service:$version and claims/ingest-node:$version"
fi
echo "release: push the commit and the tag (git push --follow-tags) to publish it"
