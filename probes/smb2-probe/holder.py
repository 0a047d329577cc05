#!/usr/bin/env python3
"""Hold a file open for writing (share read+write, like Explorer / upload tools)
until a line arrives on stdin. Usage: holder.py <path-in-share>
Prints READY once the open succeeded, CLOSED after closing. Uses IT_SMB_* env."""
import os, sys, uuid
from smbprotocol.connection import Connection
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.open import (Open, CreateDisposition, CreateOptions, FilePipePrinterAccessMask,
                              ImpersonationLevel, ShareAccess)

env = os.environ
conn = Connection(uuid.uuid4(), env["IT_SMB_HOST"], int(env["IT_SMB_PORT"]))
conn.connect(timeout=10)
sess = Session(conn, env["IT_SMB_USERNAME"], env["IT_SMB_PASSWORD"], require_encryption=False)
sess.connect()
tree = TreeConnect(sess, rf"\\{env['IT_SMB_HOST']}\{env['IT_SMB_SHARE']}")
tree.connect()
f = Open(tree, sys.argv[1].replace("/", "\\"))
f.create(ImpersonationLevel.Impersonation,
         FilePipePrinterAccessMask.FILE_WRITE_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
         0, ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
         CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
f.write(b"x" * 4096, 0)
print("READY", flush=True)
sys.stdin.readline()
f.close()
print("CLOSED", flush=True)
tree.disconnect(); sess.disconnect(); conn.disconnect()
