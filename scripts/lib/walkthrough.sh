# shellcheck shell=bash
# Sourced by check-readme.sh and check-tls.sh: the README's walkthrough, runnable elsewhere.

# readme_walkthrough BASE_URL BIN_DIR: prints the first bash block after the `walkthrough`
# marker of README.md, with its broker URL (http://127.0.0.1:8091) replaced by BASE_URL and its
# $PWD/target/debug by BIN_DIR (where the binaries were built).
readme_walkthrough() {
  local base=$1 bin=$2
  awk '/<!-- walkthrough/ {found=1; next} found && /^```bash$/ {inblock=1; next} inblock && /^```$/ {exit} inblock {print}' \
    README.md | sed -e "s#http://127.0.0.1:8091#$base#g" -e "s#\$PWD/target/debug#$bin#g"
}

# check_walkthrough_output FILE: what the walkthrough must have printed.
check_walkthrough_output() {
  local out=$1 expected
  for expected in '"sub": "agentkeys:user:0x' '"aud": "sts.amazonaws.com"' '"https://aws.amazon.com/tags"' \
    '"https://aws.amazon.com/roles": "arn:aws:iam::123456789012:role/agentkeys-data"' '"jwks_uri"' '"x5c"'; do
    grep -qF "$expected" "$out" || { cat "$out"; echo "walkthrough: missing $expected" >&2; return 1; }
  done
}
