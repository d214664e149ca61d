# Sourced by scripts/serve and scripts/test: the project's virtual
# environment, .venv in the checkout (gitignored), created if missing, so
# nothing is installed into the system Python. Defines VENV and PYTHON.
# On Debian, `python3 -m venv` needs python3-venv: installed with apt-get
# when we are root, else we say what to install.
VENV="$PWD/.venv"
PYTHON="$VENV/bin/python"

apt_install() {  # apt_install PKG...: one `apt-get update`, then install (root only)
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "forumcast: please install: $*" >&2
    return 1
  fi
  if [ -z "${_APT_UPDATED:-}" ]; then
    apt-get update -qq
    _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$PYTHON" ]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
  fi
  python3 -m venv "$VENV"
fi
