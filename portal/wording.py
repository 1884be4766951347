"""What the portal says in plain words: outcome codes as sentences a person understands.

The texts are message IDs of the portal's catalogs (Japanese; English in
`portal/locale/en/LC_MESSAGES/messages.po`).
"""
from __future__ import annotations

OUTCOMES: dict[str, str] = {
    "PERMITTED_BY_CONSENT": "あなたの許可のルールにより提供されました",
    "PERMITTED_BY_LAW": "法律の定めにより提供されました（同意は不要です）",
    "LAW_OVERRIDES_CONSENT": "あなたは拒否していましたが、法律の定めにより提供されました",
    "DENIED_BY_PERSON": "あなたの拒否のルールにより提供されませんでした",
    "CONSENT_NOT_GIVEN": "あなたの同意がないため提供されませんでした",
    "NO_WHITELIST_ENTRY": "法令で認められたやりとりではないため提供されませんでした",
    "NO_ENCRYPTION_KEY": "提供先の設定の不備により提供されませんでした",
    "DISCLOSED": "提供機関が提供したと報告しました",
    "UNMATCHED_DISCLOSURE": "許可の記録がない提供が報告されました（不一致）",
    "DISCLOSED_DESPITE_REFUSAL": "拒否された照会への提供が報告されました（不一致）",
    "OUTSIDE_PERMITTED_INFO_TYPES": "許可されていない情報の提供が報告されました（不一致）",
    # an electronic envelope the hub relayed (access_history.service.RELAY_OUTCOMES)
    "DELIVERED": "ハブが受け取る機関に届けました",
    "REJECTED_BY_RECEIVER": "ハブが届けましたが、受け取った機関は受理しませんでした",
    "NOT_DELIVERED": "受け取る機関に届かないまま保管期間が過ぎ、提供されませんでした",
}

TITLES = ("概要", "情報の所在", "やりとり履歴", "ログアウト", "ログインできませんでした",
          "要求を処理できません")
MESSAGES = (
    "ログアウトしました。",
    "ログアウトを確認できませんでした。ブラウザを閉じてください。",
    "フォームの有効期限が切れました。もう一度お試しください。",
    "ページの指定が正しくありません。",
    "ログインの応答を受け付けられませんでした。",
)


def outcome_text(code: str) -> str:
    """The plain-words sentence for an outcome code (the code itself if unknown)."""
    return OUTCOMES.get(code, code)
