package smtptest

// HostileAddresses are recipient addresses, seeds of the fuzz targets
// of package address and of relay control, in the forms that have fooled
// relay checks elsewhere: source routes, % and ! hacks, quoted local
// parts (go-smtp hands them over unquoted), IP literals, trailing dots,
// 8-bit, NUL and other control characters.
var HostileAddresses = []string{
	"u@example.com",
	"U@EXAMPLE.COM.",
	"u@evil.test",
	"@a.test,@b.test:u@evil.test",
	"@example.com:u@evil.test",
	"u%evil.test@example.com",
	"u@evil.test%example.com",
	"evil.test!u@example.com",
	"example.com!u@evil.test",
	`"u@evil.test"@example.com`,
	"u@evil.test@example.com",
	"u@example.com@evil.test",
	"u@[192.0.2.1]",
	"u@[IPv6:2001:db8::1]",
	"u@example.com.evil.test",
	"u@sub.example.com",
	"u@notexample.com",
	"u@ example.com",
	"u@example.com ",
	"u@\texample.com",
	"u@exämple.com",
	"u@example.com\x00",
	"u@example.com\x00.evil.test",
	"u@example.com\r\nRCPT TO:<v@evil.test>",
	"u@\xff\xfe",
	"postmaster",
	"",
	"@",
}
