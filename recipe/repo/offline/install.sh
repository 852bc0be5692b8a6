# Offline install of the carried Python packages for the GPU machine; SOURCE it from the repo root:
#     source recipe/repo/offline/install.sh
# Installs the bundle .gpu/whl/*.whl and the stripped ray into $GPU_SITE (default /tmp/site), writes a
# metadata-only repo_ext dist-info there (so verl's `verl.plugins` entry point is found while the
# code itself comes from the repo root), exports PYTHONPATH=$GPU_SITE:<repo root> and
# VERL_USE_EXTERNAL_MODULES=repo_ext.plugin, then checks every carried requirement is met.
# Idempotent: a second source only re-exports. Not `set -e` (it would leak into the caller).

_gpu_repo=$(pwd)
GPU_SITE=${GPU_SITE:-/tmp/site}
_gpu_py=${PYTHON:-python3}

if [[ ! -d "$_gpu_repo/.gpu/whl" || ! -f "$_gpu_repo/.gpu/ray-stripped.tar.xz" ]]; then
    echo "install.sh: source it from the repo root, with the bundle in .gpu/ (whl/ and ray-stripped.tar.xz; recipe/repo/offline/README.md)" >&2
    return 1 2>/dev/null || exit 1
fi

if [[ ! -f "$GPU_SITE/.gpu_installed" ]]; then
    mkdir -p "$GPU_SITE"
    "$_gpu_py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$GPU_SITE" "$_gpu_repo"/.gpu/whl/*.whl \
        || { echo "install.sh: pip install failed" >&2; return 1 2>/dev/null || exit 1; }
    if command -v xz >/dev/null 2>&1; then
        xz -dc "$_gpu_repo/.gpu/ray-stripped.tar.xz" | tar xf - -C "$GPU_SITE"
    else
        "$_gpu_py" -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2], filter='fully_trusted')" \
            "$_gpu_repo/.gpu/ray-stripped.tar.xz" "$GPU_SITE"
    fi || { echo "install.sh: unpacking ray failed" >&2; return 1 2>/dev/null || exit 1; }
    # verl's and TransferQueue's wheels also ship top-level recipe/scripts/tests/tutorial folders,
    # which would shadow the repo's own `tests` package; nothing on the training path imports them
    rm -rf "$GPU_SITE/recipe" "$GPU_SITE/scripts" "$GPU_SITE/tests" "$GPU_SITE/tutorial"
    # repo_ext's entry point without a copy of its code (a copy in $GPU_SITE would shadow the repo)
    _gpu_di="$GPU_SITE/repo_ext-0.1.0.dist-info"
    mkdir -p "$_gpu_di"
    printf 'Metadata-Version: 2.1\nName: repo-ext\nVersion: 0.1.0\n' > "$_gpu_di/METADATA"
    printf '[verl.plugins]\nrepo = repo_ext.plugin\n' > "$_gpu_di/entry_points.txt"
    : > "$_gpu_di/RECORD"
    touch "$GPU_SITE/.gpu_installed"
fi

case ":${PYTHONPATH:-}:" in
    *":$GPU_SITE:$_gpu_repo:"*) ;;
    *) export PYTHONPATH="$GPU_SITE:$_gpu_repo${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
export VERL_USE_EXTERNAL_MODULES=repo_ext.plugin
echo "install.sh: PYTHONPATH=$PYTHONPATH"
"$_gpu_py" "$_gpu_repo/recipe/repo/offline/check_reqs.py" "$GPU_SITE" verl transformers ray TransferQueue peft datasets
unset _gpu_repo _gpu_py _gpu_di
