-- Files that could not be read (download or hash failed), per version seen on
-- the share. Nothing was claimed or sent for them; this counts the attempts so
-- an operator is told once when the same file keeps failing.
CREATE TABLE read_failures (
    remitter        text NOT NULL,
    file_name       text NOT NULL,
    size            bigint NOT NULL,
    mtime           timestamptz NOT NULL,
    failures        integer NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_error      text NOT NULL,
    notified_at     timestamptz,
    PRIMARY KEY (remitter, file_name, size, mtime)
);
