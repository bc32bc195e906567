#!/usr/bin/env bash
# Rebuild the bundled CornStack-format samples in sparse_ray/sample/ from source code.
# Usage: bash scripts/build_samples.sh [LANGUAGE...]   (inside the project's venv; deterministic output)
# Sources: the Python standard library, the JDK's src.zip, and permissively licensed packages fetched
# by name from Debian (apt-get download; run apt-get update once) and npm (npm pack); nothing is
# installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 ]]; then set -- python unseen java javascript typescript go rust cpp php ruby; fi
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
OUT=sparse_ray/sample
ROWS=400   # rows kept per language besides python (keeps the committed samples to a few MB)
RECIPE="tree-sitter parser, CornStack filters, BM25 hard negatives with identifier-splitting tokens"

deb() {  # unpack Debian packages into $WORK/root
  (cd "$WORK" && apt-get download "$@" >/dev/null 2>&1) || { echo "apt-get download $* failed (apt-get update?)"; exit 1; }
  for f in "$WORK"/*.deb; do dpkg-deb -x "$f" "$WORK/root"; rm "$f"; done
}
npm_src() {  # unpack an npm package into $WORK/npm/NAME/package
  mkdir -p "$WORK/npm/$1" && (cd "$WORK/npm/$1" && npm pack "$1@$2" --silent >/dev/null && tar xzf ./*.tgz)
}
readme() {  # LANGUAGE DIR "DESCRIPTION" "RECIPE DETAILS"
  cat > "$2/README.md" <<MD
# CornStack-format sample: $1

Docstring → function pairs from $3 (licences beside this file), built by \`sparse-ray data build\`
($RECIPE, $4).

Rebuild: \`bash scripts/build_samples.sh $1\`
MD
}
build() {  # LANGUAGE "DESCRIPTION" LICENCE-FILE... -- SOURCE...
  local lang=$1 what=$2; shift 2
  local licences=(); while [[ $1 != -- ]]; do licences+=("$1"); shift; done; shift
  rm -rf "${OUT:?}/$lang"
  sparse-ray data build --language "$lang" --negatives 5 --max-rows "$ROWS" --out "$OUT/$lang" --source "$@" >/dev/null
  for lic in "${licences[@]}"; do
    name=$(basename "$(dirname "$lic")"); [[ $name == package ]] && name=$(basename "$(dirname "$(dirname "$lic")")")
    cp "$lic" "$OUT/$lang/LICENSE-$name"
  done
  readme "$lang" "$OUT/$lang" "$what" "consistency filter top-20, false-negative guard 0.95, at most $ROWS rows"
}

for lang in "$@"; do case $lang in
python)  # the training sample of the demo: every row that survives the filters
  STDLIB=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
  VERSION=$(python -c "import platform; print(platform.python_version())")
  rm -rf $OUT/python
  sparse-ray data build --language python --negatives 5 --out $OUT/python >/dev/null \
    --source "$STDLIB"/*.py "$STDLIB"/{asyncio,email,json,http,urllib,logging,concurrent,importlib,xml,multiprocessing}
  cp "$STDLIB/LICENSE.txt" $OUT/python/LICENSE-PSF.txt
  # shard-00001 on: the rest of the standard library and permissive libraries installed by this project
  # (never rich, click, fsspec or PyYAML: they are the unseen evaluation set), one BM25 pool of its own
  SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  LIBS=(requests jinja2 werkzeug flask pygments markdown_it attr attrs dateutil packaging pluggy tomlkit sqlparse
        networkx mako jmespath pyparsing httpx anyio starlette sqlalchemy alembic platformdirs cachetools smart_open boto3)
  sparse-ray data build --language python --negatives 5 --out "$WORK/pylibs" >/dev/null --source \
    "$STDLIB"/{collections,ctypes,curses,dbm,distutils,html,idlelib,lib2to3,re,sqlite3,tkinter,tomllib,unittest,venv,wsgiref,xmlrpc,zoneinfo} \
    "${LIBS[@]/#/$SITE/}"
  n=1; for shard in "$WORK"/pylibs/shard-*.jsonl.gz; do mv "$shard" "$(printf "$OUT/python/shard-%05d.jsonl.gz" $n)"; n=$((n + 1)); done
  for lib in "${LIBS[@]}"; do
    dist=$(ls -d "$SITE"/$lib-*.dist-info "$SITE"/python_$lib-*.dist-info "$SITE"/${lib}_py-*.dist-info 2>/dev/null | head -1) || true
    [[ -n $dist ]] && for lic in $(find "$dist" -iname 'LICEN[CS]E*' -type f); do cp "$lic" "$OUT/python/LICENSE-$lib-$(basename "$lic")"; done
  done
  readme python $OUT/python "the CPython $VERSION standard library (PSF License; shard-00000 and the first part of shard-00001)
and $(( ${#LIBS[@]} - 1 )) permissively licensed libraries installed by this project (shard-00001 on: ${LIBS[*]})" \
    "consistency filter top-20, false-negative guard 0.95; shard-00000 and the later shards mined in separate pools" ;;
unseen)  # evaluation set: python from libraries not in the training sample, no consistency filter
  SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf $OUT/unseen/python
  sparse-ray data build --language python --negatives 5 --consistency-k 100000 --out $OUT/unseen/python >/dev/null \
    --source "$SITE"/rich "$SITE"/click "$SITE"/fsspec "$SITE"/yaml
  for pkg in rich click fsspec pyyaml; do
    cp "$SITE"/$pkg-*.dist-info/licenses/LICENSE* "$OUT/unseen/python/LICENSE-$pkg.txt"
  done
  readme python $OUT/unseen/python "rich, click, fsspec and PyYAML as installed by this project; none of this
code is in the training sample (the CPython standard library and 25 other libraries, none of them these); used by
\`sparse-ray evaluate MODEL --data sparse_ray/sample/unseen\`" \
    "no consistency filter, so the set does not favour the BM25 baseline it is compared against" ;;
java)
  ZIP=$(find -L /usr/lib/jvm -name src.zip -readable 2>/dev/null | sort | tail -1)
  [[ -n $ZIP ]] || { echo "no JDK src.zip under /usr/lib/jvm"; exit 1; }
  JDK=$(dirname "$(dirname "$(readlink -f "$ZIP")")")
  (cd "$WORK" && unzip -q -o "$ZIP" 'java.base/java/util/*' 'java.base/java/io/*')
  mkdir -p "$WORK/jdk/$(basename "$JDK")"
  cp "$JDK/legal/java.base/LICENSE" "$JDK/legal/java.base/ASSEMBLY_EXCEPTION" "$WORK/jdk/$(basename "$JDK")/"
  build java "the JDK's java.util and java.io sources ($(basename "$JDK"), GPLv2 with the Classpath exception)" \
    "$WORK/jdk/$(basename "$JDK")/LICENSE" -- "$WORK/java.base"
  cp "$WORK/jdk/$(basename "$JDK")/ASSEMBLY_EXCEPTION" "$OUT/java/LICENSE-$(basename "$JDK")-ASSEMBLY_EXCEPTION" ;;
javascript)
  npm_src lodash 4.17.21
  build javascript "lodash 4.17.21 (npm, MIT)" "$WORK/npm/lodash/package/LICENSE" -- "$WORK/npm/lodash/package" ;;
typescript)
  npm_src rxjs 7.8.1
  build typescript "the rxjs 7.8.1 sources (npm, Apache-2.0)" "$WORK/npm/rxjs/package/LICENSE.txt" \
    -- "$WORK/npm/rxjs/package/src" ;;
go)
  deb golang-1.19-src
  G=$WORK/root/usr/share/go-1.19/src
  build go "the Go 1.19 standard library (Debian golang-1.19-src, BSD-3-Clause)" \
    "$WORK/root/usr/share/doc/golang-1.19-src/copyright" \
    -- "$G"/{strings,bytes,strconv,sort,bufio,net/url,text/template,encoding/json,path} ;;
rust)
  deb librust-itertools-dev librust-regex-syntax-dev librust-semver-dev
  build rust "the itertools, regex-syntax and semver crates (Debian librust-*-dev, MIT or Apache-2.0)" \
    "$WORK"/root/usr/share/doc/librust-{itertools,regex-syntax,semver}-dev/copyright \
    -- "$WORK/root/usr/share/cargo/registry" ;;
cpp)
  deb nlohmann-json3-dev pybind11-dev
  build cpp "the nlohmann/json (MIT) and pybind11 (BSD-3-Clause) headers (Debian)" \
    "$WORK"/root/usr/share/doc/{nlohmann-json3-dev,pybind11-dev}/copyright -- "$WORK/root/usr/include" ;;
php)
  deb php-league-commonmark php-symfony-string php-guzzlehttp-psr7
  build php "league/commonmark (BSD-3-Clause), symfony/string and guzzlehttp/psr7 (MIT) (Debian)" \
    "$WORK"/root/usr/share/doc/php-{league-commonmark,symfony-string,guzzlehttp-psr7}/copyright \
    -- "$WORK/root/usr/share/php" ;;
ruby)
  deb libruby3.1
  build ruby "the Ruby 3.1 standard library (Debian libruby3.1, Ruby licence or BSD-2-Clause)" \
    "$WORK/root/usr/share/doc/libruby3.1/copyright" -- "$WORK/root/usr/lib/ruby/3.1.0" ;;
*) echo "unknown language $lang"; exit 1 ;;
esac; echo "built $lang"; done
du -sh $OUT
