#!/usr/bin/env bash
# Build the pinned Weaviate server from the Go module proxy, once per version.
#
# Upstream binds its gRPC server and its cluster data API to ":<port>" (every
# interface) with no setting to change it. We build the module source with a
# two-line patch that prefixes those listen addresses with $WEAVIATE_LISTEN_HOST
# (empty = upstream behaviour), so the local stack stays on 127.0.0.1.
#
# The binary is installed twice:
#   ~/.local/bin/weaviate-server-v<version>         used by `pipelines up`
#   ~/.cache/weaviate-embedded/weaviate-v<version>-<sha256("v<version>")>
#                                                   found by weaviate-client's embedded mode
set -euo pipefail

VERSION="${WEAVIATE_VERSION:-$(python3 -c 'import re,pathlib;print(re.search(r"WEAVIATE_VERSION = \"(.+)\"", pathlib.Path("pipelines/settings.py").read_text()).group(1))')}"
BIN_DIR="${WEAVIATE_BIN_DIR:-$HOME/.local/bin}"
EMBEDDED_DIR="${WEAVIATE_EMBEDDED_DIR:-$HOME/.cache/weaviate-embedded}"
TARGET="$BIN_DIR/weaviate-server-v$VERSION"
HASH="$(printf 'v%s' "$VERSION" | sha256sum | cut -d' ' -f1)"
EMBEDDED="$EMBEDDED_DIR/weaviate-v$VERSION-$HASH"

mkdir -p "$BIN_DIR" "$EMBEDDED_DIR"
if [ -x "$TARGET" ]; then
  echo "weaviate: v$VERSION already built at $TARGET"
else
  echo "weaviate: building v$VERSION from the Go module proxy (first time: several minutes)"
  MOD="github.com/weaviate/weaviate@v$VERSION"
  SRC_CACHE="$(go env GOMODCACHE)/github.com/weaviate/weaviate@v$VERSION"
  [ -d "$SRC_CACHE" ] || (cd "$(mktemp -d)" && go mod download "$MOD")
  WORK="$(mktemp -d)"
  trap 'chmod -R u+w "$WORK"; rm -rf "$WORK"' EXIT
  cp -r "$SRC_CACHE" "$WORK/src"
  chmod -R u+w "$WORK/src"
  cd "$WORK/src"
  for f in adapters/handlers/grpc/server.go adapters/handlers/rest/clusterapi/serve.go; do
    grep -q 'fmt.Sprintf(":%d"' "$f" || { echo "weaviate: patch target changed in $f" >&2; exit 1; }
    sed -i 's/fmt.Sprintf(":%d"/fmt.Sprintf(os.Getenv("WEAVIATE_LISTEN_HOST")+":%d"/' "$f"
    grep -q '^\t"os"$' "$f" || sed -i '0,/^\t"fmt"$/s//\t"fmt"\n\t"os"/' "$f"
  done
  CGO_ENABLED=0 go build -trimpath -o "$TARGET.tmp" ./cmd/weaviate-server
  mv "$TARGET.tmp" "$TARGET"
  cd - >/dev/null
  echo "weaviate: built $TARGET"
fi
ln -sf "$TARGET" "$EMBEDDED"
echo "weaviate: embedded mode will use $EMBEDDED"
