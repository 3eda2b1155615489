"""One date format for the admin and the pages (FORMAT_MODULE_PATH): ISO order, seconds, the zone.

The JavaScript of the pages writes the same (events/static/events/time.js).
"""

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s T"
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
MONTH_DAY_FORMAT = "F j"
YEAR_MONTH_FORMAT = "F Y"
