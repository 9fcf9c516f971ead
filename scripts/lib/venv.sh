# Sourced by the test runners. ensure_venv DIR REQUIREMENTS
# Creates the Python venv DIR from the pinned REQUIREMENTS file, or reuses it while neither the
# requirements nor the interpreter changed. Bounded in time; PYTHON picks the interpreter.
ensure_venv() {
  local dir=$1 requirements=$2 python=${PYTHON:-python3} want
  want="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version)' | tr -d '\n' | sha256sum | cut -c1-16)"
  if [[ ! -x "$dir/bin/python" || "$(cat "$dir/.requirements-stamp" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$dir"
    "$python" -m venv "$dir"
    timeout 600 "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$dir/.requirements-stamp"
  fi
}
