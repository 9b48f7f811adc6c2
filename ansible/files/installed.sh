#!/bin/sh
# installed.sh ITEM...: prints what is installed on this host as one JSON
# object, so that one run of this script (no Python module) tells the role
# which files, directories, packages and units already are as they should
# be. Under emulation each Python module run costs seconds, and copy or
# template cost two of them per file even when nothing changes.
#   /path      "file SHA1 MODE OWNER:GROUP", "dir MODE OWNER:GROUP" or "absent"
#   pkg:NAME   "installed" or "absent" (dpkg)
#   unit:NAME  "ENABLED ACTIVE" (systemctl is-enabled, is-active)
# Paths are the role's own (no quotes or backslashes in them).
set -u
printf '{'
sep=''
for item in "$@"; do
	case "$item" in
	pkg:*)
		s=$(dpkg-query -W -f '${db:Status-Status}' "${item#pkg:}" 2>/dev/null) || s=absent
		[ "$s" = installed ] || s=absent
		;;
	unit:*)
		s="$(systemctl is-enabled "${item#unit:}" 2>/dev/null) $(systemctl is-active "${item#unit:}" 2>/dev/null)"
		;;
	*)
		if [ -f "$item" ]; then
			s="file $(sha1sum <"$item" | cut -d' ' -f1) $(stat -c '%04a %U:%G' "$item")"
		elif [ -d "$item" ]; then
			s="dir $(stat -c '%04a %U:%G' "$item")"
		else
			s=absent
		fi
		;;
	esac
	printf '%s"%s": "%s"' "$sep" "$item" "$s"
	sep=', '
done
printf '}\n'
