-- billing 2.4.0, step "create billing schema" (PostgreSQL).
-- Idempotent: safe to run again after a failure part-way through.

CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE IF NOT EXISTS billing.invoices (
    id          bigserial   PRIMARY KEY,
    customer_id bigint      NOT NULL,
    issued_on   date        NOT NULL DEFAULT current_date,
    currency    char(3)     NOT NULL DEFAULT 'EUR',
    status      text        NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'issued', 'paid', 'void'))
);

CREATE TABLE IF NOT EXISTS billing.invoice_lines (
    invoice_id  bigint         NOT NULL REFERENCES billing.invoices (id) ON DELETE CASCADE,
    line_no     integer        NOT NULL,
    description text           NOT NULL,
    quantity    numeric(12, 3) NOT NULL CHECK (quantity > 0),
    unit_price  numeric(12, 2) NOT NULL,
    tax_rate    numeric(5, 4)  NOT NULL DEFAULT 0.19,
    PRIMARY KEY (invoice_id, line_no)
);

CREATE INDEX IF NOT EXISTS invoices_customer_idx ON billing.invoices (customer_id, issued_on);

-- The body is dollar-quoted: its semicolons belong to the function, not to this script.
CREATE OR REPLACE FUNCTION billing.invoice_total(p_invoice_id bigint)
RETURNS numeric
LANGUAGE plpgsql
STABLE
AS $body$
DECLARE
    v_total numeric := 0;
    v_note  text := 'totals are rounded per line; see $$ in docs';
BEGIN
    SELECT coalesce(sum(round(quantity * unit_price * (1 + tax_rate), 2)), 0)
      INTO v_total
      FROM billing.invoice_lines
     WHERE invoice_id = p_invoice_id;
    IF v_total < 0 THEN
        RAISE EXCEPTION 'invoice % has a negative total: % (%)', p_invoice_id, v_total, v_note;
    END IF;
    RETURN v_total;
END;
$body$;

COMMENT ON FUNCTION billing.invoice_total(bigint) IS
    'Total of one invoice, tax included; each line is rounded to cents before summing.';
