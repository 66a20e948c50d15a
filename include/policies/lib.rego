# Helpers shared by the selfheal policies.
package selfheal.lib

import rego.v1

# The text of any value, for reason messages. Messages are built with concat(),
# never sprintf("%s"): regopy 1.5.2's sprintf wraps some strings (those built by
# concat, or passed through a function argument) in raw, unescaped quotes.
text(x) := x if is_string(x)

else := format_int(x, 10) if {
	is_number(x)
	x == floor(x)
}

else := json.marshal(x)

msg(parts) := concat("", [text(p) | some p in parts])
