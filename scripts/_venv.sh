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

# setup.py's C extensions (the fan-out, streaming/_fanout.c; the load
# tester's receive side, streaming/_rtp_rx.c) build when a C compiler and
# the Python headers are there; without them the package installs anyway
# and the Python paths run (slower). Root installs them.
need_build=()
command -v cc >/dev/null || need_build+=(gcc libc6-dev)
[ -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need_build+=(python3-dev)
if [ ${#need_build[@]} -gt 0 ]; then
  apt_install "${need_build[@]}" || echo "forumcast: without a C compiler the fan-out runs its slower Python path" >&2
fi
