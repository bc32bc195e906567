#!/usr/bin/env bash
# Rebuild the bundled CornStack-format samples in sparse_ray/sample/ from source code on this machine.
# Usage: bash scripts/build_samples.sh   (inside the project's venv; deterministic output)
set -euo pipefail
STDLIB=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
# Python: the CPython standard library (PSF License), top-level modules plus a few packages.
rm -rf sparse_ray/sample/python
sparse-ray data build --language python --negatives 5 --out sparse_ray/sample/python \
  --source "$STDLIB"/*.py "$STDLIB"/{asyncio,email,json,http,urllib,logging,concurrent,importlib,xml,multiprocessing}
cp "$STDLIB/LICENSE.txt" sparse_ray/sample/python/LICENSE-PSF.txt
cat > sparse_ray/sample/python/README.md <<MD
# CornStack-format sample: python

Docstring → function pairs from the CPython $(python -c "import platform; print(platform.python_version())") standard library
(PSF License, see LICENSE-PSF.txt), built by \`sparse-ray data build\` (ast parser, CornStack filters,
BM25 hard negatives with identifier-splitting tokens, consistency filter top-20, false-negative guard 0.95).

Rebuild: \`bash scripts/build_samples.sh\`
MD

# Unseen evaluation set: python code from libraries that are not in the training sample
# (rich MIT, click BSD-3-Clause, fsspec BSD-3-Clause, PyYAML MIT). No BM25 consistency filter, so
# the set does not favour the BM25 baseline it is compared against.
SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf sparse_ray/sample/unseen/python
sparse-ray data build --language python --negatives 5 --consistency-k 100000 --out sparse_ray/sample/unseen/python \
  --source "$SITE"/rich "$SITE"/click "$SITE"/fsspec "$SITE"/yaml
for pkg in rich click fsspec pyyaml; do
  cp "$SITE"/$pkg-*.dist-info/licenses/LICENSE* "sparse_ray/sample/unseen/python/LICENSE-$pkg.txt"
done
cat > sparse_ray/sample/unseen/python/README.md <<MD
# Unseen evaluation set: python

Docstring → function pairs from rich, click, fsspec and PyYAML as installed by this project
(licences beside this file), built by \`sparse-ray data build\` without the BM25 consistency filter.
None of this code is in the training sample (the CPython standard library). Used by
\`sparse-ray evaluate MODEL --data sparse_ray/sample/unseen\`.

Rebuild: \`bash scripts/build_samples.sh\`
MD
