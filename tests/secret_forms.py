"""Secrets in the forms production text carries them, with the parts that must never be stored.

Each form is a piece of text (as it appears in an exception message, a log line,
an argument) and the substrings of it that are secret. The leaks reported in
issue 15 are among them (marked "issue 15").
"""

from __future__ import annotations

from typing import NamedTuple


class Form(NamedTuple):
    name: str
    text: str
    secrets: tuple[str, ...]
    #: recognised by its prefix only (``ghp_``...): cut within 8 characters of it, a piece stays visible
    shape: bool = False


FORMS: list[Form] = [
    # issue 15: "Authorization: *** abc.def.ghi" kept the token
    Form("bearer header", "Authorization: Bearer abc.def.ghi", ("abc.def", "def.ghi")),
    Form("basic header", "authorization: Basic zq02YWxhZGRpbjpvcGVu", ("zq02",)),
    Form("token header", "Authorization: Token zq03abcdef0123456789", ("zq03",)),
    Form("proxy header", "Proxy-Authorization: Basic zq04cHJveHk6cHc=", ("zq04",)),
    Form("cookie header", "Cookie: sessionid=zq05a; csrftoken=zq05b", ("zq05a", "zq05b")),
    Form("set-cookie header", "Set-Cookie: session=zq06; Path=/; HttpOnly", ("zq06",)),
    # issue 15: quoted values with spaces kept all but their first word
    Form("quoted value with spaces", 'password="my zq07a secret zq07b"', ("zq07a", "zq07b")),
    Form("python repr", "{'password': 'zq08a with zq08b spaces', 'user': 'ann'}", ("zq08a", "zq08b")),
    Form("unterminated quote", 'password="zq09a never zq09b closed', ("zq09a", "zq09b")),
    # issue 15: token-only URL userinfo, a password containing "@"
    Form("token-only userinfo", "clone https://ghp_zq10aaaaaaaaaaaaaaaaaaaa@github.com/org/repo.git", ("zq10",)),
    Form("password with @", "redis://:p@zq11@ss@redis.internal:6379/0", ("zq11",)),
    Form("redis url", "redis://default:zq12pw@redis.internal:6379/0", ("zq12",)),
    Form("amqp url", "amqp://guest:zq13pw@rabbit:5672//", ("zq13",)),
    # issue 15: X-Amz-Signature=, private_key=, session=, card_number=
    Form("presigned url", "https://b.s3.amazonaws.com/k?X-Amz-Credential=zq14a%2F2026&X-Amz-Signature=zq14b0123",
         ("zq14a", "zq14b")),
    Form("azure sas", "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=zq15%3D", ("zq15",)),
    Form("private key field", "private_key=zq16MIIEvQIBADANBgkq", ("zq16",)),
    Form("session field", "session=zq17s3ss10n", ("zq17",)),
    Form("card number", "card_number=4929 1234 5678 9012 exp=12/30", ("1234 5678", "5678 9012")),
    Form("json api key", '{"api_key": "zq19-live", "user": "ann"}', ("zq19",)),
    Form("api key field", "gateway declined (api_key=zq20)", ("zq20",)),
    Form("api key header", "X-Api-Key: zq21", ("zq21",)),
    Form("client secret", "client_secret=zq22&grant_type=client_credentials", ("zq22",)),
    Form("tokens in a query", "?access_token=zq23a&refresh_token=zq23b", ("zq23a", "zq23b")),
    Form("environment variable", "DB_PASSWORD=zq24", ("zq24",)),
    Form("camelCase short name", "dbPass=zq25", ("zq25",)),
    Form("connection string", "Server=db;User Id=sa;Password=zq26;Pwd=zq26b;", ("zq26",)),
    Form("azure account key", "AccountName=acct;AccountKey=zq27==;EndpointSuffix=core", ("zq27",)),
    Form("sentry dsn", "SENTRY_DSN=https://zq28@o1.ingest.sentry.io/1", ("zq28",)),
    Form("bearer in prose", "sent Bearer zq29.abc.def to the API", ("zq29",)),
    Form("json web token", "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6cTMwIn0.zq30sig", ("eyJzdWIiOiJ6cTMwIn0", "zq30")),
    Form("github token", "token ghp_zq31aaaaaaaaaaaaaaaaaaaaaaaa leaked", ("zq31",), shape=True),
    Form("slack token", "xoxb-zq32-1234567890-abcdef", ("zq32",), shape=True),
    Form("stripe key", "sk_live_zq33abcdefghijkl", ("zq33",), shape=True),
    Form("aws key id", "AKIAZQ34EXAMPLEKEY", ("ZQ34",), shape=True),
    Form("pem block", "-----BEGIN RSA PRIVATE KEY-----\nMIIzq35a\nzq35b==\n-----END RSA PRIVATE KEY-----",
         ("zq35a", "zq35b")),
    Form("yaml token", "token: zq36", ("zq36",)),
    Form("json secret with spaces", '"secret": "zq37a with zq37b"', ("zq37a", "zq37b")),
    Form("passphrase", "passphrase='zq38a b zq38b'", ("zq38a", "zq38b")),
    Form("ssn and cvv", "ssn=zq39a cvv: zq39b", ("zq39a", "zq39b")),
    Form("keyword argument repr", "charge(order_id='o-1', api_key='zq40', amount=5)", ("zq40",)),
    Form("header in a json string", '{"headers": {"Authorization": "Bearer zq41"}}', ("zq41",)),
    Form("repr inside a repr", "{\\'api_key\\': \\'zq42a b zq42b\\', \\'user\\': \\'ann\\'}", ("zq42a", "zq42b")),
    Form("quotes left open in a repr", "{'args': ['password=\"zq44a b'], 'note': 'password=\"zq44b c'}",
         ("zq44a", "zq44b")),
    Form("json inside json", '{\\"password\\": \\"zq43a b zq43b\\", \\"user\\": \\"ann\\"}', ("zq43a", "zq43b")),
]
