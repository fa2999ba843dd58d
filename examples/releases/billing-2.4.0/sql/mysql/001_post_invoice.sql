-- billing 2.4.0, step "ledger posting procedure" (MySQL / MariaDB).
-- DELIMITER is understood by the agent's SQL executor as it is by the mysql client.

CREATE TABLE IF NOT EXISTS ledger_entries (
    id          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    invoice_id  BIGINT        NOT NULL,
    account     VARCHAR(32)   NOT NULL,
    amount      DECIMAL(14,2) NOT NULL,
    posted_at   TIMESTAMP     NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY uq_ledger_invoice_account (invoice_id, account)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

DROP PROCEDURE IF EXISTS post_invoice;

DELIMITER //
CREATE PROCEDURE post_invoice(IN p_invoice_id BIGINT, IN p_amount DECIMAL(14,2))
    MODIFIES SQL DATA
BEGIN
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;

    IF p_amount <= 0 THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'post_invoice: amount must be positive';
    END IF;

    START TRANSACTION;
    INSERT INTO ledger_entries (invoice_id, account, amount)
        VALUES (p_invoice_id, 'receivables', p_amount);
    INSERT INTO ledger_entries (invoice_id, account, amount)
        VALUES (p_invoice_id, 'revenue', -p_amount);
    COMMIT;
END //
DELIMITER ;
