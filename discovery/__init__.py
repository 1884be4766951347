"""The discovery room: information location (情報所在管理) and the ID-WSF Discovery Service.

Not built yet (issue 3).
"""
