"""A change list for the request log that never scans it: keyset pages, bounded counts, time order only.

Django's own change list counts every matching row (`COUNT(*)`) and pages with `OFFSET`, both of which read the
whole log once it holds millions of rows. This one orders by (created_at, id) — the `routing_log_time` index, or a
filter's (column, created_at) index — and pages by key: the next page is the rows after the last one shown
(`?after=`), the previous page the rows before the first (`?before=`), the last page the oldest rows read backwards
(`?end=1`). A page reads its rows plus one, to know whether more follow. What it says about the total: the
planner's estimate for the whole log (Postgres), an exact count up to COUNT_CAP for a filtered list (unless counting
takes longer than COUNT_BUDGET_MS), and nothing for a text search.
"""

from datetime import UTC, datetime
from html import escape

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.templatetags.admin_list import result_headers
from django.contrib.admin.utils import display_for_field
from django.contrib.admin.views.main import ChangeList
from django.db import OperationalError, connection, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils.formats import number_format
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from routing import partitions

AFTER, BEFORE, END = "after", "before", "end"
CURSOR_PARAMS = (AFTER, BEFORE, END)
# A filtered list of more than a page counts its rows up to this many, then says "more than"; a count that takes
# longer than KeysetChangeList.COUNT_BUDGET_MS is given up (the list then says nothing of its total).
COUNT_CAP = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def html_of(value):
    """Return value as HTML: safe strings as they are, anything else escaped (html.escape: Django's escape() is
    slower, and a page escapes over a thousand values)."""
    if hasattr(value, "__html__"):
        return value.__html__()
    return escape(str(value))


def cursor_key(row):
    """Return the page key of a row: its created_at in microseconds since the epoch and its id."""
    delta = row.created_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}_{row.pk}"


def parse_cursor_key(value):
    """Return (created_at, id) of a page key; raise IncorrectLookupParameters if it is not one."""
    try:
        micros, pk = (int(part) for part in value.split("_"))
        from_epoch = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
    except (ValueError, OverflowError, OSError) as exc:
        raise IncorrectLookupParameters(f"not a page key: {value!r}") from exc
    return from_epoch, pk


def beyond(key, descending):
    """Return the condition of the rows past key in time order (older when descending, else newer).

    The plain bound on created_at is what the index scan starts from; the rest breaks ties on the id.
    """
    created_at, pk = key
    if descending:
        return Q(created_at__lte=created_at) & (Q(created_at__lt=created_at) | Q(pk__lt=pk))
    return Q(created_at__gte=created_at) & (Q(created_at__gt=created_at) | Q(pk__gt=pk))


class KeysetChangeList(ChangeList):
    """A change list in time order (newest first unless sorted the other way), paged by key.

    `model_admin.search_kind(term)` says whether a search term is a text search ("text": no count shown). The rows
    are rendered here, one string each (`result_rows`), for the template to print: Django's generic row tags cost
    more than the page's queries.
    """

    EMPTY = "—"
    COUNT_BUDGET_MS = 50

    def get_filters_params(self, params=None):
        """Return the filter parameters, the page keys left out."""
        lookup_params = super().get_filters_params(params)
        for name in CURSOR_PARAMS:
            lookup_params.pop(name, None)
        return lookup_params

    def get_query_string(self, new_params=None, remove=None):
        """Return a query string for a link; every link but a page link starts again from the first page."""
        return super().get_query_string(new_params, [*(remove or []), *CURSOR_PARAMS])

    def get_queryset(self, request, exclude_parameters=None):
        """Return the filtered rows in time order; read the page key first, out of the filters' way."""
        self.cursor = {name: self.params[name] for name in CURSOR_PARAMS if name in self.params}
        for name in CURSOR_PARAMS:
            self.params.pop(name, None)
            self.filter_params.pop(name, None)
        return super().get_queryset(request, exclude_parameters)

    def get_ordering(self, request, queryset):
        """Return time order, newest first unless the time column was sorted ascending: no other order is indexed."""
        ordering = super().get_ordering(request, queryset)
        self.descending = not (ordering and ordering[0] == "created_at")
        return ["-created_at", "-pk"] if self.descending else ["created_at", "pk"]

    def get_results(self, request):
        """Read one page by key, and what can be said cheaply about how many rows match."""
        per_page = self.list_per_page
        queryset = self.queryset
        reverse = False
        if AFTER in self.cursor:
            queryset = queryset.filter(beyond(parse_cursor_key(self.cursor[AFTER]), self.descending))
        elif BEFORE in self.cursor:
            queryset = queryset.reverse().filter(beyond(parse_cursor_key(self.cursor[BEFORE]), not self.descending))
            reverse = True
        elif END in self.cursor:
            queryset = queryset.reverse()
            reverse = True
        rows = list(queryset[: per_page + 1])
        more = len(rows) > per_page
        rows = rows[:per_page]
        if reverse:
            rows.reverse()
        self.result_list = rows
        # Read backwards (a previous or the last page), "more" means more before; the way back is always there.
        self.has_previous = more if reverse else AFTER in self.cursor
        self.has_next = BEFORE in self.cursor if reverse else more
        self.page_links = self._page_links(rows)
        self.result_count = len(rows)
        self.full_result_count = None
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.can_show_all = False
        self.multi_page = self.has_previous or self.has_next
        self.paginator = None
        self.count_text = self._count_text()

    def result_headers(self):
        """Return the column headers as Django's change list template reads them."""
        return list(result_headers(self))

    def result_rows(self):
        """Return each row as the HTML of its table row: list_display's values, the first link to the detail page."""
        links = set(self.list_display_links or self.list_display[:1])
        query = f"?{urlencode({'_changelist_filters': self.preserved_filters})}" if self.preserved_filters else ""
        # One reverse() for the page: every row's link differs only by its id.
        placeholder = "0" * 20
        url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(placeholder,),
            current_app=self.model_admin.admin_site.name,
        )
        before, after = url.split(placeholder)
        rows = []
        for obj in self.result_list:
            cells = []
            for name in self.list_display:
                value = self._display(obj, name)
                if name in links:
                    href = escape(f"{before}{obj.pk}{after}{query}")
                    cells.append(f'<th class="field-{name}"><a href="{href}">{value}</a></th>')
                else:
                    cells.append(f'<td class="field-{name}">{value}</td>')
            rows.append(mark_safe(f"<tr>{''.join(cells)}</tr>"))  # every value escaped by _display
        return rows

    def _display(self, obj, name):
        """Return one column's value of a row as HTML: the admin's display method, else the field as the admin
        shows it."""
        method = getattr(self.model_admin, name, None)
        if callable(method):
            return html_of(method(obj))
        field = self.opts.get_field(name)
        if field.is_relation:
            related = getattr(obj, name)
            return self.EMPTY if related is None else html_of(related)
        return html_of(display_for_field(getattr(obj, name), field, self.EMPTY))

    def _page_links(self, rows):
        """Return [(label, URL or None)] of the first, previous, next and last pages."""
        newer, older = ("Newest", "‹ Newer", "Older ›", "Oldest"), ("Oldest", "‹ Older", "Newer ›", "Newest")
        first, previous, following, last = newer if self.descending else older
        return [
            (first, self.get_query_string() if self.has_previous else None),
            (previous, self.get_query_string({BEFORE: cursor_key(rows[0])}) if self.has_previous else None),
            (following, self.get_query_string({AFTER: cursor_key(rows[-1])}) if self.has_next else None),
            (last, self.get_query_string({END: 1}) if self.has_next else None),
        ]

    def _count_text(self):
        """Return what to say about the number of matching rows, without scanning for it."""
        noun = self.opts.verbose_name_plural
        if self.query and self.model_admin.search_kind(self.query) == "text":
            return ""
        if not self.query and not self.get_filters_params():
            # Only of the whole table: a proxy whose manager filters it (Selection) is counted like a filtered list.
            # A small or never-analysed table is estimated low: then the capped count below is cheap and true.
            estimate = partitions.estimated_rows() if not self.root_queryset.query.where else None
            if estimate is not None and estimate > COUNT_CAP:
                return f"about {number_format(estimate, force_grouping=True)} {noun} in all"
        # One page holds them all: counted already.
        counted = len(self.result_list) if not self.multi_page else self._capped_count()
        if counted is None:
            return ""
        if counted > COUNT_CAP:
            return f"more than {number_format(COUNT_CAP, force_grouping=True)} {noun}"
        return f"{number_format(counted, force_grouping=True)} {self.opts.verbose_name if counted == 1 else noun}"

    def _capped_count(self):
        """Return how many rows match, up to COUNT_CAP + 1; None when that takes longer than COUNT_BUDGET_MS (rare
        matches over a long time: the 1,001 of them may lie far apart)."""
        query = self.queryset.order_by()[: COUNT_CAP + 1]
        if connection.vendor != "postgresql":
            return query.count()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {int(self.COUNT_BUDGET_MS)}")
                return query.count()
        except OperationalError:  # the statement timeout cancelled it
            return None
