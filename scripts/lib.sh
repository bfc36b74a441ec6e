# Shared by the project's install scripts (sourced, not run).

# require_root NAME: stop unless running as root.
require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "$1: must run as root" >&2
		exit 1
	fi
}

# missing_packages P...: print those of the Debian packages P that are not installed, each after a space.
missing_packages() {
	for p in "$@"; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		if [ "$status" != "installed" ]; then
			printf ' %s' "$p"
		fi
	done
}
