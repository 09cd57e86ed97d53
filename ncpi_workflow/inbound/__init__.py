"""Replies by email: the force's answers to the emails it was sent, recorded without retyping.

- `parsing`          reading a reply: token, sender, reference, own text, attachments, automatic mail
- `processing`       `Receiver.receive`: recorded / triaged / automatic, once per Message-ID
- `acknowledgement`  the acknowledgement email (outbox kind `reply_acknowledgement`)
- `smtp_server`      `ncpi inbound smtp` (aiosmtpd)
- `imap_poller`      `ncpi inbound imap` (aioimaplib)
- `inbox`            the triage list (`ncpi inbox`, /inbox)
- `cli`              the commands, registered in ncpi_workflow/cli.py
"""
