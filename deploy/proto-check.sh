#!/usr/bin/env bash
# The public API's checks (CI runs them): `buf lint` with proto/buf.yaml, and
# `buf breaking` (wire and JSON compatibility) against the newest release tag
# (v*, or the released commit in proto/BASELINE when the clone has no tag), then proof that the breaking check bites: a copy of proto/ with a field
# removed must be refused. buf comes from npm (@bufbuild/buf), kept in
# /var/cache/maestro/buf.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MAESTRO_BUF_DIR:-/var/cache/maestro/buf}
buf="$cache/node_modules/.bin/buf"
if [ ! -x "$buf" ]; then
  mkdir -p "$cache"
  (cd "$cache" && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0)
fi
cd "$repo"
echo "== buf lint"
"$buf" lint proto
tag=$(git tag --list 'v*' --sort=-version:refname | head -n 1)
if [ -n "$tag" ]; then
  echo "== buf breaking against $tag"
  "$buf" breaking proto --against ".git#tag=$tag,subdir=proto"
elif [ -s proto/BASELINE ]; then
  # No tag in this clone: compare with the released commit the file names.
  base=$(grep -v '^#' proto/BASELINE | head -n 1 | tr -d '[:space:]')
  echo "== buf breaking against $base (proto/BASELINE)"
  "$buf" breaking proto --against ".git#ref=$base,subdir=proto"
else
  echo "== buf breaking: no release tag (v*) and no proto/BASELINE, nothing to compare with"; exit 1
fi
echo "== the breaking check refuses a removed field"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r proto "$work/proto"
# Drop ProjectService's GetProjectRequest.id: a wire and JSON break.
sed -i '/^message GetProjectRequest {/,/^}/{/string id = 1;/d}' "$work/proto/maestro/v1/projects.proto"
if "$buf" breaking "$work/proto" --against proto >"$work/out" 2>&1; then
  echo "buf breaking did not notice a removed field"; exit 1
fi
grep -q "GetProjectRequest" "$work/out"
echo "proto: ok"
