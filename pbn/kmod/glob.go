package kmod

// match reports whether s matches the shell pattern p as fnmatch(3)
// without flags does it for modules.alias: '*' matches any run of bytes,
// '?' one byte, and '[...]' (or '[!...]') a set of bytes with ranges.
// Unlike path.Match, '/' is an ordinary byte and '\' escapes nothing.
func match(p, s string) bool {
	// The usual greedy matcher: remember the last star and retry from it
	// one byte further on a mismatch, so the work is bounded by
	// len(p)*len(s).
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(s) {
		if pi < len(p) {
			switch p[pi] {
			case '*':
				starP, starS = pi, si
				pi++
				continue
			case '?':
				pi++
				si++
				continue
			case '[':
				if ok, n := matchClass(p[pi:], s[si]); n > 0 {
					if ok {
						pi += n
						si++
						continue
					}
				} else if s[si] == '[' { // an unterminated '[' is a literal
					pi++
					si++
					continue
				}
			default:
				if p[pi] == s[si] {
					pi++
					si++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starS++
		pi, si = starP+1, starS
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// matchClass matches b against the bracket expression at the start of p
// and returns the expression's length, or 0 when p has no closing ']'.
func matchClass(p string, b byte) (ok bool, n int) {
	i := 1
	negate := i < len(p) && (p[i] == '!' || p[i] == '^')
	if negate {
		i++
	}
	first := true
	for ; i < len(p); i++ {
		c := p[i]
		if c == ']' && !first {
			return ok != negate, i + 1
		}
		first = false
		if i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']' {
			if c <= b && b <= p[i+2] {
				ok = true
			}
			i += 2
			continue
		}
		if c == b {
			ok = true
		}
	}
	return false, 0
}
