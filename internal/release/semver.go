package release

import (
	"errors"
	"strconv"
	"strings"
)

// Version is a semantic version (semver.org 2.0): MAJOR.MINOR.PATCH, an optional pre-release
// after "-" and build metadata after "+", which takes no part in comparisons. A leading "v" is
// accepted.
type Version struct {
	Major, Minor, Patch uint64
	Pre                 []string
}

// ParseVersion reads a semantic version.
func ParseVersion(s string) (Version, error) {
	var v Version
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		if strings.ContainsAny(s[i:], "/\\ ") {
			return Version{}, errors.New("build metadata: letters, digits, dots and hyphens")
		}
		s = s[:i]
	}
	core := s
	if i := strings.IndexByte(s, '-'); i >= 0 {
		core = s[:i]
		v.Pre = strings.Split(s[i+1:], ".")
		for _, p := range v.Pre {
			if p == "" || strings.Trim(p, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-") != "" {
				return Version{}, errors.New("pre-release identifiers: letters, digits and hyphens")
			}
		}
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, errors.New("want MAJOR.MINOR.PATCH, e.g. 1.4.0")
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return Version{}, errors.New("want MAJOR.MINOR.PATCH of decimal numbers, e.g. 1.4.0")
		}
		*[]*uint64{&v.Major, &v.Minor, &v.Patch}[i] = n
	}
	return v, nil
}

// Compare returns -1, 0 or +1 as a is older than, the same as, or newer than b. A version that
// does not parse (a development build, "dev") is older than every version that does.
func Compare(a, b string) int {
	va, ea := ParseVersion(a)
	vb, eb := ParseVersion(b)
	switch {
	case ea != nil && eb != nil:
		return strings.Compare(a, b)
	case ea != nil:
		return -1
	case eb != nil:
		return 1
	}
	for _, d := range [][2]uint64{{va.Major, vb.Major}, {va.Minor, vb.Minor}, {va.Patch, vb.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	// A version with a pre-release is older than the same version without one.
	switch {
	case len(va.Pre) == 0 && len(vb.Pre) == 0:
		return 0
	case len(va.Pre) == 0:
		return 1
	case len(vb.Pre) == 0:
		return -1
	}
	for i := 0; i < len(va.Pre) && i < len(vb.Pre); i++ {
		if c := comparePre(va.Pre[i], vb.Pre[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(va.Pre) < len(vb.Pre):
		return -1
	case len(va.Pre) > len(vb.Pre):
		return 1
	}
	return 0
}

// comparePre compares pre-release identifiers: numbers numerically and below words, words in
// ASCII order.
func comparePre(a, b string) int {
	na, ea := strconv.ParseUint(a, 10, 64)
	nb, eb := strconv.ParseUint(b, 10, 64)
	switch {
	case ea == nil && eb == nil:
		switch {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return 0
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}
