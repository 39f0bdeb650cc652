package chat

import "strings"

// lstripBlocks applies Jinja2's lstrip_blocks to a template source: blanks
// (spaces and tabs) between the start of a line and a block tag "{%" or a
// comment "{#" are removed, unless the tag opens with "+". Text inside
// tags, string literals in tags and {% raw %} sections is left alone.
func lstripBlocks(src string) string {
	var out strings.Builder
	out.Grow(len(src))
	lineStart := 0    // offset in out where the current line starts
	onlyBlank := true // the current line holds only blanks so far
	for i := 0; i < len(src); {
		c := src[i]
		if c == '{' && i+1 < len(src) && (src[i+1] == '%' || src[i+1] == '#' || src[i+1] == '{') {
			open := src[i+1]
			if open != '{' && onlyBlank && !(i+2 < len(src) && src[i+2] == '+') {
				s := out.String()[:lineStart]
				out.Reset()
				out.WriteString(s)
			}
			end := tagEnd(src, i)
			tag := src[i:end]
			out.WriteString(tag)
			i = end
			onlyBlank = false
			if open == '%' && isRawTag(tag) {
				// Copy the raw body and its {% endraw %} tag verbatim.
				j := strings.Index(src[i:], "endraw")
				if j < 0 {
					out.WriteString(src[i:])
					return out.String()
				}
				e := tagEnd(src, i+j)
				out.WriteString(src[i:e])
				i = e
			}
			continue
		}
		out.WriteByte(c)
		switch c {
		case '\n':
			lineStart, onlyBlank = out.Len(), true
		case ' ', '\t':
		default:
			onlyBlank = false
		}
		i++
	}
	return out.String()
}

// tagEnd returns the offset just past the tag starting at i ("{%", "{{" or
// "{#"), skipping string literals inside "{%" and "{{" tags. An unclosed
// tag extends to the end of src (the parser reports the error).
func tagEnd(src string, i int) int {
	open := src[i+1]
	closer := map[byte]string{'%': "%}", '{': "}}", '#': "#}"}[open]
	if open == '#' {
		j := strings.Index(src[i+2:], closer)
		if j < 0 {
			return len(src)
		}
		return i + 2 + j + 2
	}
	for j := i + 2; j < len(src); j++ {
		switch src[j] {
		case '\'', '"':
			q := src[j]
			for j++; j < len(src) && src[j] != q; j++ {
				if src[j] == '\\' {
					j++
				}
			}
		default:
			if strings.HasPrefix(src[j:], closer) {
				return j + 2
			}
		}
	}
	return len(src)
}

func isRawTag(tag string) bool {
	if len(tag) < 4 {
		return false
	}
	body := strings.Trim(tag[2:len(tag)-2], "-+ \t\r\n")
	return body == "raw"
}
