#!/usr/bin/env bash
# Checks the guide as mdBook renders it: every relative link and image of every page of the
# built book (`mdbook build docs`, into target/book) names a file that exists there. Links to
# other sites are not followed.
set -euo pipefail
book="${1:-target/book}"
checked=0
broken=0
for page in "$book"/*.html; do
    dir=$(dirname "$page")
    while IFS= read -r target; do
        case "$target" in
        http://* | https://* | mailto:* | data:* | javascript:* | \#*) continue ;;
        esac
        file="${target%%#*}"
        file="${file%%\?*}"
        [ -z "$file" ] && continue
        checked=$((checked + 1))
        if [ ! -e "$dir/$file" ]; then
            echo "broken link in $(basename "$page"): $target"
            broken=$((broken + 1))
        fi
    done < <(grep -oE '(href|src)="[^"]+"' "$page" | sed -E 's/^(href|src)="(.*)"$/\2/')
done
echo "$checked relative links checked in $book, $broken broken"
[ "$broken" -eq 0 ] && [ "$checked" -gt 100 ]
