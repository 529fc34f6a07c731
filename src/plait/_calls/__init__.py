"""One tool call: admission, attempt, retry and middleware, composed once per tool."""
