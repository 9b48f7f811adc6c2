#!/bin/sh
# dirs.sh MODE:OWNER:GROUP:PATH...: makes each directory, or sets its mode
# and owner, in one run (no Python module); prints "changed PATH" for each
# it changed. Paths are the role's own (no colons or spaces in them).
set -eu
for spec in "$@"; do
	mode=${spec%%:*}
	rest=${spec#*:}
	owner=${rest%%:*}
	rest=${rest#*:}
	group=${rest%%:*}
	path=${rest#*:}
	if [ -d "$path" ] && [ "$(stat -c '%04a %U:%G' "$path")" = "$mode $owner:$group" ]; then
		continue
	fi
	install -d -m "$mode" -o "$owner" -g "$group" "$path"
	chmod "$mode" "$path" # install -d may leave an existing one as it was
	chown "$owner:$group" "$path"
	echo "changed $path"
done
