"""The disclosure decision: the law's whitelist (別表第２) first, then the person's own policy.

Also the person's policy history (利用許諾ポリシー) and the signed consent receipts it issues.
"""
