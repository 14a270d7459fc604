package event

import "time"

// isDateTime reports whether s is an RFC 3339 date-time
// (YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)), read strictly: an upper-case T
// and Z, a real calendar date (30 February is not one), hours 00–23,
// minutes and seconds 00–59, any number of fractional digits after a '.',
// and a time zone whose offset is at most ±23:59. It accepts what Go's
// time.Parse(time.RFC3339, s) does, less a ',' before the fraction (ISO
// 8601's, not RFC 3339's) and offsets of 24 hours or 60 minutes, which Go
// lets through. Seconds of 60 (leap seconds) are refused as Go and
// JavaScript parsers refuse them. It does not allocate.
func isDateTime[S ~string | ~[]byte](s S) bool {
	const minLen = len("2006-01-02T15:04:05Z")
	if len(s) < minLen {
		return false
	}
	for _, i := range [...]int{0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18} {
		if !isDigit(s[i]) {
			return false
		}
	}
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return false
	}
	year := int(s[0]-'0')*1000 + int(s[1]-'0')*100 + int(s[2]-'0')*10 + int(s[3]-'0')
	month, day := two(s[5], s[6]), two(s[8], s[9])
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return false
	}
	if two(s[11], s[12]) > 23 || two(s[14], s[15]) > 59 || two(s[17], s[18]) > 59 {
		return false
	}
	i := 19
	if s[i] == '.' {
		i++
		j := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == j {
			return false
		}
	}
	switch rest := len(s) - i; {
	case rest == 1 && s[i] == 'Z':
		return true
	case rest == 6 && (s[i] == '+' || s[i] == '-'):
		return isDigit(s[i+1]) && isDigit(s[i+2]) && s[i+3] == ':' && isDigit(s[i+4]) && isDigit(s[i+5]) &&
			two(s[i+1], s[i+2]) <= 23 && two(s[i+4], s[i+5]) <= 59
	default:
		return false
	}
}

// two is the value of the two decimal digits a and b.
func two(a, b byte) int { return int(a-'0')*10 + int(b-'0') }

// daysIn is the number of days in month (1–12) of year, proleptic Gregorian.
func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	default:
		return 31
	}
}

// timestampLayout is the form an inserted timestamp takes, in UTC:
// Customer.io's and the Segment libraries' own (JavaScript's toISOString).
const timestampLayout = "2006-01-02T15:04:05.000Z07:00"

// timestampLen is the length of every timestamp appendTimestamp writes.
const timestampLen = len("2006-01-02T15:04:05.000Z")

// canStamp reports whether appendTimestamp can write t: it is set, and its
// year has four digits as RFC 3339 requires.
func canStamp(t time.Time) bool {
	if t.IsZero() {
		return false
	}
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}

// appendTimestamp appends t in UTC as timestampLayout formats it, with the
// milliseconds truncated, as time.Time.AppendFormat would but a few times
// faster; t must satisfy canStamp.
func appendTimestamp(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / int(time.Millisecond)
	dst = append(dst,
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+int(month)/10), byte('0'+int(month)%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
	return dst
}
